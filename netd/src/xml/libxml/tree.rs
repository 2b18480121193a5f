//! XML text read into the tree libxml2 builds from it the way libvirt and virsh read
//! it (`xmlKeepBlanksDefault(0)`: indentation between elements is no text node).

use std::collections::HashSet;
use std::sync::Arc;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The namespace the `xml` prefix is bound to in every document.
pub const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// Why the XML text could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    fn new(reason: impl std::fmt::Display) -> ParseError {
        ParseError(reason.to_string())
    }
}

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// A qualified name as written (`prefix:local`), with the namespace it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub prefix: Option<String>,
    pub local: String,
    /// The URI, shared with the declaration: a long one is not copied per element.
    pub namespace: Option<Arc<str>>,
}

impl Name {
    /// The name as written in the document.
    pub fn qualified(&self) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}:{}", self.local),
            None => self.local.clone(),
        }
    }
}

/// A namespace declaration (`xmlns:p="uri"`, or `xmlns="uri"` with no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: Option<String>,
    pub uri: Arc<str>,
}

/// What a node is, with what libxml2 keeps of it.
#[derive(Debug)]
pub enum Kind {
    Document,
    Element {
        name: Name,
        /// Declarations made on this element, in document order (libxml2's `nsDef`).
        declared: Vec<Namespace>,
        /// Namespaces in scope here, `xml` first: the element's namespace nodes. Shared
        /// with the parent when the element declares none, so that a document's size,
        /// not its elements times its namespaces, bounds the memory it takes.
        in_scope: Arc<[Arc<Namespace>]>,
        attributes: Vec<NodeId>,
    },
    Attribute {
        name: Name,
        value: String,
    },
    Text(String),
    CData(String),
    Comment(String),
    ProcessingInstruction {
        target: String,
        data: String,
    },
}

/// One node: what it is, where it is, and its place in document order.
#[derive(Debug)]
pub struct NodeData {
    pub kind: Kind,
    pub parent: Option<NodeId>,
    pub children: Vec<NodeId>,
}

/// A parsed document; node 0 is the document node. Nodes are numbered in document
/// order: an element, then its attributes, then its children.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<NodeData>,
}

/// Deepest nesting read; libxml2 refuses documents nested deeper than 256 levels.
const MAX_DEPTH: usize = 256;
/// Most namespace declarations read in one document: each declaring element gets a
/// scope of its own, as long as every namespace in scope there. Network metadata uses
/// a few.
const MAX_DECLARATIONS: usize = 256;

impl Tree {
    /// Reads `xml` as libxml2 does with blanks not kept.
    pub fn parse(xml: &str) -> Result<Tree, ParseError> {
        let mut builder = Builder {
            tree: Tree {
                nodes: vec![NodeData {
                    kind: Kind::Document,
                    parent: None,
                    children: Vec::new(),
                }],
            },
            open: vec![0],
            text: String::new(),
            text_has_reference: false,
            declarations: 0,
        };
        let mut reader = Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        loop {
            let event = reader.read_event().map_err(ParseError::new)?;
            if !matches!(event, Event::Text(_) | Event::GeneralRef(_)) {
                builder.flush_text(matches!(event, Event::End(_)))?;
            }
            match event {
                Event::Start(start) => builder.element(&start, true)?,
                Event::Empty(start) => builder.element(&start, false)?,
                Event::End(_) => {
                    builder.open.pop();
                }
                Event::Text(text) => {
                    builder
                        .text
                        .push_str(&text.xml10_content().map_err(ParseError::new)?);
                }
                Event::GeneralRef(reference) => {
                    let name = reference.decode().map_err(ParseError::new)?;
                    builder.text.push('&');
                    builder.text.push_str(&name);
                    builder.text.push(';');
                    builder.text_has_reference = true;
                }
                Event::CData(data) => {
                    let data = data.xml10_content().map_err(ParseError::new)?.into_owned();
                    builder.leaf(Kind::CData(data));
                }
                Event::Comment(comment) => {
                    let text = comment
                        .xml10_content()
                        .map_err(ParseError::new)?
                        .into_owned();
                    builder.leaf(Kind::Comment(text));
                }
                Event::PI(pi) => {
                    let target = String::from_utf8_lossy(pi.target()).into_owned();
                    let data = String::from_utf8_lossy(pi.content())
                        .trim_start()
                        .to_owned();
                    builder.leaf(Kind::ProcessingInstruction { target, data });
                }
                Event::Decl(_) | Event::DocType(_) => {}
                Event::Eof => break,
            }
        }
        if builder.open.len() != 1 {
            return Err(ParseError::new("premature end of data"));
        }
        let tree = builder.tree;
        if tree.root_element().is_none() {
            return Err(ParseError::new("missing root element"));
        }
        Ok(tree)
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &NodeData {
        &self.nodes[id]
    }

    /// The document element, where virsh starts evaluating.
    pub fn root_element(&self) -> Option<NodeId> {
        self.nodes[0]
            .children
            .iter()
            .copied()
            .find(|&child| matches!(self.nodes[child].kind, Kind::Element { .. }))
    }

    /// The concatenated text beneath `id` (XPath's string-value of an element).
    pub fn descendant_text(&self, id: NodeId, out: &mut String) {
        for &child in &self.nodes[id].children {
            match &self.nodes[child].kind {
                Kind::Text(text) | Kind::CData(text) => out.push_str(text),
                Kind::Element { .. } => self.descendant_text(child, out),
                _ => {}
            }
        }
    }
}

/// The tree being read: open elements and the character data not yet placed.
struct Builder {
    tree: Tree,
    /// The document node, then each open element.
    open: Vec<NodeId>,
    /// Character data since the last markup, still escaped as written.
    text: String,
    /// Whether that data holds an entity or character reference (never blank then).
    text_has_reference: bool,
    /// Namespace declarations read so far.
    declarations: usize,
}

impl Builder {
    fn current(&self) -> NodeId {
        self.open.last().copied().unwrap_or(0)
    }

    fn push(&mut self, kind: Kind, parent: NodeId) -> NodeId {
        let id = self.tree.nodes.len();
        self.tree.nodes.push(NodeData {
            kind,
            parent: Some(parent),
            children: Vec::new(),
        });
        id
    }

    /// A node with no children of its own under the current element (or document).
    fn leaf(&mut self, kind: Kind) {
        let parent = self.current();
        let id = self.push(kind, parent);
        self.tree.nodes[parent].children.push(id);
    }

    /// Places the character data read since the last markup. Blank data is dropped
    /// as libxml2's `areBlanks` heuristic does without a DTD: unless it is the only
    /// content of an element (`closing` says an end tag follows), or the element
    /// already holds text. Data outside the document element is never kept.
    fn flush_text(&mut self, closing: bool) -> Result<(), ParseError> {
        if self.text.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.text);
        let has_reference = std::mem::take(&mut self.text_has_reference);
        let parent = self.current();
        if parent == 0 {
            return Ok(());
        }
        let blank = !has_reference
            && raw
                .bytes()
                .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if blank {
            let children = &self.tree.nodes[parent].children;
            let is_text = |id: &NodeId| matches!(self.tree.nodes[*id].kind, Kind::Text(_));
            let keep = (children.is_empty() && closing)
                || children.last().is_some_and(is_text)
                || children.first().is_some_and(is_text);
            if !keep {
                return Ok(());
            }
        }
        let text = quick_xml::escape::unescape(&normalize_line_ends(&raw))
            .map_err(ParseError::new)?
            .into_owned();
        if let Some(&last) = self.tree.nodes[parent].children.last()
            && let Kind::Text(existing) = &mut self.tree.nodes[last].kind
        {
            existing.push_str(&text);
            return Ok(());
        }
        self.leaf(Kind::Text(text));
        Ok(())
    }

    /// An element and its attributes; `open` for a start tag (not `<x/>`).
    fn element(&mut self, start: &BytesStart, open: bool) -> Result<(), ParseError> {
        if self.open.len() > MAX_DEPTH {
            return Err(ParseError::new("excessive depth in document"));
        }
        let parent = self.current();
        if parent == 0 && self.tree.root_element().is_some() {
            return Err(ParseError::new("extra content at the end of the document"));
        }
        let mut declared = Vec::new();
        let mut attributes = Vec::new();
        // quick-xml's own duplicate check compares each attribute with every earlier
        // one: quadratic in one element's attributes. A set is not.
        let mut keys = HashSet::new();
        for attribute in start.attributes().with_checks(false) {
            let attribute = attribute.map_err(ParseError::new)?;
            let key = std::str::from_utf8(attribute.key.as_ref()).map_err(ParseError::new)?;
            if !keys.insert(key.to_owned()) {
                return Err(ParseError::new(format!("attribute {key} redefined")));
            }
            let raw = std::str::from_utf8(&attribute.value).map_err(ParseError::new)?;
            let value = attribute_value(raw)?;
            if key == "xmlns" {
                declared.push(Namespace {
                    prefix: None,
                    uri: value.into(),
                });
            } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                declared.push(Namespace {
                    prefix: Some(prefix.to_owned()),
                    uri: value.into(),
                });
            } else {
                attributes.push((key.to_owned(), value));
            }
        }
        let inherited = match &self.tree.nodes[parent].kind {
            Kind::Element { in_scope, .. } => Arc::clone(in_scope),
            _ => Arc::from([Arc::new(Namespace {
                prefix: Some("xml".to_owned()),
                uri: Arc::from(XML_NAMESPACE),
            })]),
        };
        self.declarations += declared.len();
        if self.declarations > MAX_DECLARATIONS {
            return Err(ParseError::new(format!(
                "more than {MAX_DECLARATIONS} namespace declarations"
            )));
        }
        let in_scope: Arc<[Arc<Namespace>]> = if declared.is_empty() {
            inherited
        } else {
            // A redeclared prefix moves to the end, with its new URI; `xmlns=""` takes
            // the default namespace away. (The prefixes of one element are distinct.)
            let redeclared: HashSet<&Option<String>> =
                declared.iter().map(|namespace| &namespace.prefix).collect();
            inherited
                .iter()
                .filter(|known| !redeclared.contains(&known.prefix))
                .cloned()
                .chain(
                    declared
                        .iter()
                        .filter(|namespace| !namespace.uri.is_empty() || namespace.prefix.is_some())
                        .map(|namespace| Arc::new(namespace.clone())),
                )
                .collect()
        };
        let qname = std::str::from_utf8(start.name().as_ref())
            .map_err(ParseError::new)?
            .to_owned();
        let name = resolve(&qname, &in_scope, true);
        let id = self.push(
            Kind::Element {
                name,
                declared,
                in_scope: Arc::clone(&in_scope),
                attributes: Vec::new(),
            },
            parent,
        );
        self.tree.nodes[parent].children.push(id);
        let mut attribute_ids = Vec::with_capacity(attributes.len());
        for (key, value) in attributes {
            let name = resolve(&key, &in_scope, false);
            attribute_ids.push(self.push(Kind::Attribute { name, value }, id));
        }
        if let Kind::Element {
            attributes: attrs, ..
        } = &mut self.tree.nodes[id].kind
        {
            *attrs = attribute_ids;
        }
        if open {
            self.open.push(id);
        }
        Ok(())
    }
}

/// `prefix:local` resolved against the namespaces in scope; an unprefixed attribute
/// has no namespace, an unprefixed element the default one. An unbound prefix
/// (which libxml2 warns about and keeps) resolves to no namespace.
fn resolve(qname: &str, in_scope: &[Arc<Namespace>], element: bool) -> Name {
    let (prefix, local) = match qname.split_once(':') {
        Some((prefix, local)) => (Some(prefix.to_owned()), local.to_owned()),
        None => (None, qname.to_owned()),
    };
    let namespace = if prefix.is_none() && !element {
        None
    } else {
        in_scope
            .iter()
            .find(|known| known.prefix == prefix)
            .map(|known| known.uri.clone())
    };
    Name {
        prefix,
        local,
        namespace,
    }
}

/// XML's end-of-line handling: `\r\n` and a lone `\r` read as `\n`.
fn normalize_line_ends(raw: &str) -> String {
    raw.replace("\r\n", "\n").replace('\r', "\n")
}

/// An attribute's value as a parser reports it: line ends normalized, then each
/// literal tab or newline read as a space, then references resolved.
fn attribute_value(raw: &str) -> Result<String, ParseError> {
    let spaced = normalize_line_ends(raw).replace(['\t', '\n'], " ");
    Ok(quick_xml::escape::unescape(&spaced)
        .map_err(ParseError::new)?
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elements that declare nothing share their parent's namespaces: a long URI in
    /// scope of many elements is not copied into each (a 16 MiB request once asked for
    /// terabytes), and declarations are bounded.
    #[test]
    fn namespaces_are_shared_and_bounded() {
        let uri = "u".repeat(1 << 20);
        let xml = format!(
            "<network xmlns:x='{uri}'><metadata>{}</metadata></network>",
            "<x:a/>".repeat(100_000)
        );
        let tree = Tree::parse(&xml).expect("parses");
        let scopes: Vec<&Arc<[Arc<Namespace>]>> = tree
            .nodes
            .iter()
            .filter_map(|node| match &node.kind {
                Kind::Element { in_scope, .. } => Some(in_scope),
                _ => None,
            })
            .collect();
        assert_eq!(scopes.len(), 100_002);
        assert!(scopes.iter().all(|scope| Arc::ptr_eq(scope, scopes[0])));
        assert_eq!(scopes[0].len(), 2);

        let many: String = (0..=MAX_DECLARATIONS)
            .map(|n| format!("<a xmlns:p{n}='urn:{n}'/>"))
            .collect();
        let error = Tree::parse(&format!("<r>{many}</r>")).expect_err("too many");
        assert!(
            error.to_string().contains("namespace declarations"),
            "{error}"
        );

        let error = Tree::parse("<r a='1' b='2' a='3'/>").expect_err("duplicate");
        assert!(error.to_string().contains("redefined"), "{error}");
        // Redeclared prefixes take their new URI; xmlns='' drops the default.
        let tree =
            Tree::parse("<r xmlns='urn:d' xmlns:p='urn:1'><s xmlns:p='urn:2' xmlns=''/></r>")
                .expect("parses");
        let Kind::Element { in_scope, .. } = &tree.nodes[2].kind else {
            panic!("an element");
        };
        let scope: Vec<(Option<&str>, &str)> = in_scope
            .iter()
            .map(|ns| (ns.prefix.as_deref(), &*ns.uri))
            .collect();
        assert_eq!(scope, [(Some("xml"), XML_NAMESPACE), (Some("p"), "urn:2")]);
    }
}
