//! The document `net-dumpxml --xpath` searches: the daemon's XML read into libxml2's
//! tree ([`netd::xml::libxml`]), and its nodes as XPath sees them.

use std::cmp::Ordering;

pub use netd::xml::libxml::{Kind, Namespace, NodeData, NodeId, ParseError, Tree, XML_NAMESPACE};
use xpath_eval::{ExpandedName, NodeKind};

/// A node as XPath sees it: a node of the tree, or the namespace node `namespace`
/// (an index into its element's namespaces in scope).
#[derive(Debug, Clone, Copy)]
pub struct XNode<'a> {
    pub tree: &'a Tree,
    pub id: NodeId,
    pub namespace: Option<usize>,
}

impl PartialEq for XNode<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.tree, other.tree)
            && self.id == other.id
            && self.namespace == other.namespace
    }
}

impl Eq for XNode<'_> {}

impl<'a> XNode<'a> {
    pub fn new(tree: &'a Tree, id: NodeId) -> XNode<'a> {
        XNode {
            tree,
            id,
            namespace: None,
        }
    }

    fn data(self) -> &'a NodeData {
        self.tree.node(self.id)
    }

    /// The namespace this node stands for, if it is a namespace node.
    pub fn as_namespace(self) -> Option<&'a Namespace> {
        let index = self.namespace?;
        match &self.data().kind {
            Kind::Element { in_scope, .. } => in_scope.get(index).map(|namespace| &**namespace),
            _ => None,
        }
    }

    fn order_key(self) -> (usize, usize) {
        (self.id, self.namespace.map_or(0, |index| index + 1))
    }
}

impl<'a> xpath_eval::Node<'a> for XNode<'a> {
    fn kind(self) -> NodeKind {
        if self.namespace.is_some() {
            return NodeKind::Namespace;
        }
        match self.data().kind {
            Kind::Document => NodeKind::Root,
            Kind::Element { .. } => NodeKind::Element,
            Kind::Attribute { .. } => NodeKind::Attribute,
            Kind::Text(_) | Kind::CData(_) => NodeKind::Text,
            Kind::Comment(_) => NodeKind::Comment,
            Kind::ProcessingInstruction { .. } => NodeKind::ProcessingInstruction,
        }
    }

    fn parent(self) -> Option<Self> {
        if self.namespace.is_some() {
            return Some(XNode::new(self.tree, self.id));
        }
        self.data()
            .parent
            .map(|parent| XNode::new(self.tree, parent))
    }

    fn children(self) -> impl Iterator<Item = Self> + 'a {
        let tree = self.tree;
        let children: &'a [NodeId] = if self.namespace.is_some() {
            &[]
        } else {
            &self.data().children
        };
        children.iter().map(move |&child| XNode::new(tree, child))
    }

    fn attributes(self) -> impl Iterator<Item = Self> + 'a {
        let tree = self.tree;
        let attributes: &'a [NodeId] = match (&self.data().kind, self.namespace) {
            (Kind::Element { attributes, .. }, None) => attributes,
            _ => &[],
        };
        attributes
            .iter()
            .map(move |&attribute| XNode::new(tree, attribute))
    }

    fn namespaces(self) -> impl Iterator<Item = Self> + 'a {
        let count = match (&self.data().kind, self.namespace) {
            (Kind::Element { in_scope, .. }, None) => in_scope.len(),
            _ => 0,
        };
        let (tree, id) = (self.tree, self.id);
        (0..count).map(move |index| XNode {
            tree,
            id,
            namespace: Some(index),
        })
    }

    fn expanded_name(self) -> Option<ExpandedName> {
        if let Some(namespace) = self.as_namespace() {
            return Some(ExpandedName {
                namespace_uri: None,
                local_name: namespace.prefix.clone().unwrap_or_default(),
            });
        }
        match &self.data().kind {
            Kind::Element { name, .. } | Kind::Attribute { name, .. } => Some(ExpandedName {
                namespace_uri: name.namespace.as_deref().map(str::to_owned),
                local_name: name.local.clone(),
            }),
            Kind::ProcessingInstruction { target, .. } => Some(ExpandedName {
                namespace_uri: None,
                local_name: target.clone(),
            }),
            _ => None,
        }
    }

    fn string_value(self) -> String {
        if let Some(namespace) = self.as_namespace() {
            return namespace.uri.to_string();
        }
        match &self.data().kind {
            Kind::Document | Kind::Element { .. } => {
                let mut text = String::new();
                self.tree.descendant_text(self.id, &mut text);
                text
            }
            Kind::Attribute { value, .. } => value.clone(),
            Kind::Text(text) | Kind::CData(text) | Kind::Comment(text) => text.clone(),
            Kind::ProcessingInstruction { data, .. } => data.clone(),
        }
    }

    fn document_order(self, other: Self) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }
}
