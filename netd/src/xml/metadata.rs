//! `<metadata>`: applications' own elements, kept with a network as libvirt keeps them.
//! libvirt copies the first `<metadata>` of the document (`xmlCopyNode`, which declares on
//! the copy the namespaces it uses that were declared further up), drops its children
//! without a namespace and every later child in a namespace an earlier one has
//! (`virXMLNodeSanitizeNamespaces`), and writes it back after `<description>` with
//! libxml2's node dump (`virXMLFormatMetadata`). kvnet stores what that writes.

use super::Error;
use super::libxml::{Kind, Namespace, NodeId, Tree, Writer};

/// The `<metadata>` of the network document `xml` as libvirt writes it inside
/// `<network>`: its first line unindented, the others indented for the network's
/// children. `None` without one.
pub(super) fn network_metadata(xml: &str) -> Result<Option<String>, Error> {
    let tree = Tree::parse(xml).map_err(|e| Error::Malformed {
        document: "network",
        line: 1,
        column: 1,
        reason: e.to_string(),
    })?;
    let Some(root) = tree.root_element() else {
        return Ok(None);
    };
    let metadata = tree.node(root).children.iter().copied().find(|&child| {
        matches!(&tree.node(child).kind, Kind::Element { name, .. }
            if name.local == "metadata" && name.prefix.is_none() && name.namespace.is_none())
    });
    Ok(metadata.map(|metadata| dump(&tree, metadata)))
}

/// The copy of element `metadata`, sanitized and written at the network's children's
/// level.
fn dump(tree: &Tree, metadata: NodeId) -> String {
    let Kind::Element {
        name, attributes, ..
    } = &tree.node(metadata).kind
    else {
        return String::new();
    };
    let reconciled = reconciled_declarations(tree, metadata);
    let attributes: Vec<_> = attributes
        .iter()
        .filter_map(|&attribute| match &tree.node(attribute).kind {
            Kind::Attribute { name, value } => Some((name, value.as_str())),
            _ => None,
        })
        .collect();
    let kept = sanitized_children(tree, metadata);
    let mut writer = Writer::new(tree).at_level(1);
    writer.element(&name.qualified(), &reconciled, &attributes, &kept, true);
    writer.finish()
}

/// What `xmlCopyNode` declares on the copy of `metadata`: its own declarations, then
/// each namespace an element or attribute of the copy uses under a prefix that nothing
/// in the copy binds, in the order it copies them (an element, then its attributes,
/// then its children). Children dropped afterwards keep theirs there, as in libvirt.
fn reconciled_declarations(tree: &Tree, metadata: NodeId) -> Vec<Namespace> {
    let mut root = match &tree.node(metadata).kind {
        Kind::Element { declared, .. } => declared.clone(),
        _ => Vec::new(),
    };
    declare_unbound(tree, metadata, &[], &mut root);
    for &child in &tree.node(metadata).children {
        reconcile(tree, child, &[], &mut root);
    }
    root
}

/// [`reconciled_declarations`] below the root: `ancestors` are the declarations of the
/// copied elements between the root and `id`.
fn reconcile(tree: &Tree, id: NodeId, ancestors: &[Namespace], root: &mut Vec<Namespace>) {
    let Kind::Element { declared, .. } = &tree.node(id).kind else {
        return;
    };
    let mut here = ancestors.to_vec();
    here.extend(declared.iter().cloned());
    declare_unbound(tree, id, &here, root);
    for &child in &tree.node(id).children {
        reconcile(tree, child, &here, root);
    }
}

/// Declares on `root` the namespaces element `id` and its attributes use whose prefix
/// neither `here` nor `root` binds.
fn declare_unbound(tree: &Tree, id: NodeId, here: &[Namespace], root: &mut Vec<Namespace>) {
    let Kind::Element {
        name, attributes, ..
    } = &tree.node(id).kind
    else {
        return;
    };
    let attribute_names =
        attributes
            .iter()
            .filter_map(|&attribute| match &tree.node(attribute).kind {
                Kind::Attribute { name, .. } => Some(name),
                _ => None,
            });
    for used in std::iter::once(name).chain(attribute_names) {
        let Some(uri) = &used.namespace else {
            continue;
        };
        // libxml2 always knows `xml`.
        if used.prefix.as_deref() == Some("xml") {
            continue;
        }
        let bound = here
            .iter()
            .chain(root.iter())
            .any(|known| known.prefix == used.prefix);
        if !bound {
            root.push(Namespace {
                prefix: used.prefix.clone(),
                uri: uri.clone(),
            });
        }
    }
}

/// `virXMLNodeSanitizeNamespaces`: the child elements that have a namespace, the first
/// of each namespace only; text, comments and the rest go.
fn sanitized_children(tree: &Tree, metadata: NodeId) -> Vec<NodeId> {
    let mut kept: Vec<NodeId> = Vec::new();
    let mut namespaces: Vec<&str> = Vec::new();
    for &child in &tree.node(metadata).children {
        let Kind::Element { name, .. } = &tree.node(child).kind else {
            continue;
        };
        let Some(uri) = name.namespace.as_deref() else {
            continue;
        };
        if !namespaces.contains(&uri) {
            namespaces.push(uri);
            kept.push(child);
        }
    }
    kept
}
