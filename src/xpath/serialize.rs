//! XPath results written as virsh writes them: libxml2's `xmlNodeDump` with
//! `format=1` at level 0 ([`Writer`]).

use netd::xml::libxml::{Kind, Name, Tree, Writer};

use super::tree::XNode;

/// `node` as virsh's `virXMLNodeToString` gives it; `None` where libxml2 writes
/// nothing (the implicit `xml` namespace node), which virsh then prints as `(null)`.
pub fn node_to_string(tree: &Tree, node: XNode) -> Option<String> {
    let mut writer = Writer::new(tree);
    match node.as_namespace() {
        Some(namespace) => writer.namespace_node(namespace),
        None => writer.node(node.id, true),
    }
    Some(writer.finish()).filter(|text| !text.is_empty())
}

/// `--wrap`: the results as copies under a `<nodes>` element. Attribute results
/// become its attributes (a later one replaces an earlier one of the same name, as
/// `xmlAddChild` does), the others its children. Namespace nodes are left out:
/// virsh 9.0 crashes copying them.
pub fn wrapped(tree: &Tree, nodes: &[XNode]) -> String {
    let mut attributes: Vec<(&Name, &str)> = Vec::new();
    let mut children = Vec::new();
    for node in nodes {
        if node.namespace.is_some() {
            continue;
        }
        match &tree.node(node.id).kind {
            Kind::Attribute { name, value } => {
                attributes.retain(|(known, _)| {
                    known.local != name.local || known.namespace != name.namespace
                });
                attributes.push((name, value));
            }
            _ => children.push(node.id),
        }
    }
    let mut writer = Writer::new(tree);
    writer.element("nodes", &[], &attributes, &children, true);
    writer.finish()
}
