//! `<dnsmasq:options>`: the dnsmasq config lines libvirt passes through
//! (namespace `http://libvirt.org/schemas/network/dnsmasq/1.0`, any prefix).

use super::dom::Element;

/// The namespace libvirt reads `<options>` and `<option>` in.
pub(super) const NAMESPACE: &str = "http://libvirt.org/schemas/network/dnsmasq/1.0";

/// Whether `element` is `<local>` in the dnsmasq namespace. Its prefix (or the default
/// namespace) is looked up on the element, then on `ancestors`, innermost last, as an
/// XML namespace is scoped; libvirt matches the URI, whatever the prefix.
pub(super) fn is_dnsmasq(element: &Element, ancestors: &[&Element], local: &str) -> bool {
    let (prefix, name) = match element.name.split_once(':') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, element.name.as_str()),
    };
    if name != local {
        return false;
    }
    let key = prefix.map_or_else(|| "xmlns".to_owned(), |prefix| format!("xmlns:{prefix}"));
    std::iter::once(element)
        .chain(ancestors.iter().rev().copied())
        .find_map(|e| e.attr(&key))
        == Some(NAMESPACE)
}

/// Whether `key` is a namespace declaration, which carries no configuration.
pub(super) fn is_declaration(key: &str) -> bool {
    key == "xmlns" || key.starts_with("xmlns:")
}
