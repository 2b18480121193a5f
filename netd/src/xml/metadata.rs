//! `<metadata>`: applications' own elements, kept with a network as libvirt keeps them.
//! libvirt copies the first `<metadata>` of the document (`xmlCopyNode`, which declares on
//! the copy the namespaces it uses that were declared further up), drops its children
//! without a namespace and every later child in a namespace an earlier one has
//! (`virXMLNodeSanitizeNamespaces`), and writes it back after `<description>` with
//! libxml2's node dump (`virXMLFormatMetadata`). kvnet stores what that writes, but
//! refuses a definition given to it with what libvirt would drop (a second `<metadata>`,
//! text, an element without a namespace or in one an earlier element has) rather than
//! lose it without a word. A file already on disk (written by hand) loads, without those,
//! as libvirt loads it, with a warning for each.

use super::libxml::{Kind, Namespace, NodeId, Tree, Writer};
use super::{Error, invalid};

/// The `<metadata>` of the network document `xml` (network `network`) as libvirt writes
/// it inside `<network>`: its first line unindented, the others indented for the
/// network's children. `None` without one. What libvirt would drop is refused, or, for a
/// file on disk (`stored`), dropped with a warning.
pub(super) fn network_metadata(
    xml: &str,
    network: &str,
    stored: bool,
) -> Result<Option<String>, Error> {
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
    metadata
        .map(|metadata| dump(&tree, metadata, network, stored))
        .transpose()
}

/// The copy of element `metadata`, checked and written at the network's children's
/// level.
fn dump(tree: &Tree, metadata: NodeId, network: &str, stored: bool) -> Result<String, Error> {
    let Kind::Element {
        name, attributes, ..
    } = &tree.node(metadata).kind
    else {
        return Ok(String::new());
    };
    let reconciled = reconciled_declarations(tree, metadata);
    let attributes: Vec<_> = attributes
        .iter()
        .filter_map(|&attribute| match &tree.node(attribute).kind {
            Kind::Attribute { name, value } => Some((name, value.as_str())),
            _ => None,
        })
        .collect();
    let kept = checked_children(tree, metadata, network, stored)?;
    let mut writer = Writer::new(tree).at_level(1);
    writer.element(&name.qualified(), &reconciled, &attributes, &kept, true);
    Ok(writer.finish())
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

/// The child elements `virXMLNodeSanitizeNamespaces` keeps: each in a namespace of its
/// own. Comments go, as everywhere in the document, and so does whitespace; text, an
/// element without a namespace or a second one in a namespace are refused, or in a file
/// on disk (`stored`) dropped with a warning.
fn checked_children(
    tree: &Tree,
    metadata: NodeId,
    network: &str,
    stored: bool,
) -> Result<Vec<NodeId>, Error> {
    let mut kept: Vec<NodeId> = Vec::new();
    let mut namespaces: Vec<&str> = Vec::new();
    for &child in &tree.node(metadata).children {
        let problem = match &tree.node(child).kind {
            Kind::Element { name, .. } => match name.namespace.as_deref() {
                None => format!(
                    "element <{}> in the <metadata> of network '{network}' has no namespace: only elements in a namespace of their own can be kept there",
                    name.qualified()
                ),
                Some(uri) if namespaces.contains(&uri) => format!(
                    "element <{}> in the <metadata> of network '{network}' is a second one in namespace '{uri}': only one element per namespace can be kept there",
                    name.qualified()
                ),
                Some(uri) => {
                    namespaces.push(uri);
                    kept.push(child);
                    continue;
                }
            },
            Kind::Text(text) | Kind::CData(text) if !text.trim().is_empty() => format!(
                "text in the <metadata> of network '{network}': only elements in a namespace of their own can be kept there"
            ),
            _ => continue,
        };
        if !stored {
            return Err(invalid(problem));
        }
        tracing::warn!(
            network,
            "dropped from a definition on disk, as libvirt drops it: {problem}"
        );
    }
    Ok(kept)
}
