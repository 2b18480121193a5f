//! libxml2's `xmlNodeDump` with `format=1` (libxml2 2.9.14, Debian bookworm's, which
//! libvirt 9.0 and virsh 9.0 use), over a [`Tree`].
//!
//! What that means: attributes in double quotes; an element without children as
//! `<x/>`; an element whose children include text written inline, as read; any
//! other element's children one per line, indented two spaces per level (at most
//! 30 levels). Text escapes `<`, `>`, `&` and carriage return; attribute values
//! also `"`, tab and newline, and every non-ASCII character as a character
//! reference, except within a whole document written out (`/`), where libxml2
//! takes the document's encoding as UTF-8.

use std::fmt::Write as _;

use super::tree::{Kind, Name, Namespace, NodeId, Tree};

/// libxml2's indentation: two spaces a level, no deeper than 60 columns.
const INDENT: &str = "  ";
const MAX_INDENT_LEVELS: usize = 30;

/// libxml2's save context: where the text goes, the indentation level, and whether
/// formatting is on (it is off inside an element that holds text).
#[derive(Debug)]
pub struct Writer<'a> {
    tree: &'a Tree,
    out: String,
    level: usize,
    format: bool,
    /// Attribute values write non-ASCII characters as references (a document
    /// without a declared encoding).
    escape_non_ascii: bool,
}

impl<'a> Writer<'a> {
    /// A writer at level 0, formatting on, as `xmlNodeDump(.., 0, 1)` starts.
    pub fn new(tree: &'a Tree) -> Writer<'a> {
        Writer {
            tree,
            out: String::new(),
            level: 0,
            format: true,
            escape_non_ascii: true,
        }
    }

    /// Starts at indentation `level`, as `xmlNodeDump`'s `level` argument does: the
    /// first line is not indented, the lines of the children are.
    pub fn at_level(mut self, level: usize) -> Writer<'a> {
        self.level = level;
        self
    }

    /// What was written.
    pub fn finish(self) -> String {
        self.out
    }

    fn indent(&mut self) {
        for _ in 0..self.level.min(MAX_INDENT_LEVELS) {
            self.out.push_str(INDENT);
        }
    }

    /// Node `id`; `top` when it is the node being dumped (never indented).
    pub fn node(&mut self, id: NodeId, top: bool) {
        let tree = self.tree;
        let data = tree.node(id);
        match &data.kind {
            Kind::Document => self.document(&data.children, top),
            Kind::Element {
                name,
                declared,
                attributes,
                ..
            } => {
                let attributes: Vec<(&Name, &str)> = attributes
                    .iter()
                    .filter_map(|&attribute| match &tree.node(attribute).kind {
                        Kind::Attribute { name, value } => Some((name, value.as_str())),
                        _ => None,
                    })
                    .collect();
                self.element(
                    &name.qualified(),
                    declared,
                    &attributes,
                    &data.children,
                    top,
                );
            }
            Kind::Attribute { name, value } => self.attribute(name, value),
            Kind::Text(text) => escape_text(&mut self.out, text),
            Kind::CData(text) => self.cdata(text),
            Kind::Comment(text) => {
                if !top && self.format {
                    self.indent();
                }
                let _ = write!(self.out, "<!--{text}-->");
            }
            Kind::ProcessingInstruction { target, data } => {
                if !top && self.format {
                    self.indent();
                }
                self.out.push_str("<?");
                self.out.push_str(target);
                if !data.is_empty() {
                    self.out.push(' ');
                    self.out.push_str(data);
                }
                self.out.push_str("?>");
            }
        }
    }

    /// An element with these parts; `top` when it is the node being dumped.
    pub fn element(
        &mut self,
        qname: &str,
        declared: &[Namespace],
        attributes: &[(&Name, &str)],
        children: &[NodeId],
        top: bool,
    ) {
        if !top && self.format {
            self.indent();
        }
        self.out.push('<');
        self.out.push_str(qname);
        for namespace in declared {
            self.declaration(namespace);
        }
        for (name, value) in attributes {
            self.attribute(name, value);
        }
        if children.is_empty() {
            self.out.push_str("/>");
            return;
        }
        let holds_text = children
            .iter()
            .any(|&child| matches!(self.tree.node(child).kind, Kind::Text(_) | Kind::CData(_)));
        let unformatted = self.format && holds_text;
        if unformatted {
            self.format = false;
        }
        self.out.push('>');
        if self.format {
            self.out.push('\n');
        }
        self.level += 1;
        for &child in children {
            self.node(child, false);
            if self.format {
                self.out.push('\n');
            }
        }
        self.level = self.level.saturating_sub(1);
        if self.format {
            self.indent();
        }
        let _ = write!(self.out, "</{qname}>");
        if unformatted {
            self.format = true;
        }
    }

    /// A whole document: the XML declaration, then each top-level node on its own
    /// line, each from level 0 (libxml2 leaves the level there afterwards). Written
    /// out itself (`top`), the document counts as UTF-8 and its attribute values
    /// keep non-ASCII characters; its copy under `<nodes>` does not.
    fn document(&mut self, children: &[NodeId], top: bool) {
        self.out
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let escape_non_ascii = std::mem::replace(&mut self.escape_non_ascii, !top);
        for &child in children {
            self.level = 0;
            self.node(child, true);
            self.out.push('\n');
        }
        self.escape_non_ascii = escape_non_ascii;
    }

    fn attribute(&mut self, name: &Name, value: &str) {
        self.out.push(' ');
        self.out.push_str(&name.qualified());
        self.out.push_str("=\"");
        escape_attribute(&mut self.out, value, self.escape_non_ascii);
        self.out.push('"');
    }

    /// A namespace declaration on an element (` xmlns:p="uri"`). libxml2 2.9 writes the
    /// URI as its parser kept it, where an `&amp;` is `&#38;` but an `&lt;` a bare `<`,
    /// which no parser takes back, and a `&#9;` a bare tab, which reads back as a space:
    /// `&` is written as libvirt's bytes have it, `<` and those blanks as references, so
    /// that a definition read back is the same.
    fn declaration(&mut self, namespace: &Namespace) {
        self.out.push_str(" xmlns");
        if let Some(prefix) = &namespace.prefix {
            self.out.push(':');
            self.out.push_str(prefix);
        }
        self.out.push('=');
        let mut uri = String::with_capacity(namespace.uri.len());
        for c in namespace.uri.chars() {
            match c {
                '&' => uri.push_str("&#38;"),
                '<' => uri.push_str("&lt;"),
                '\t' => uri.push_str("&#9;"),
                '\n' => uri.push_str("&#10;"),
                '\r' => uri.push_str("&#13;"),
                c => uri.push(c),
            }
        }
        quoted(&mut self.out, &uri);
    }

    /// A namespace node: its declaration, except for `xml`, which is never written.
    pub fn namespace_node(&mut self, namespace: &Namespace) {
        if namespace.prefix.as_deref() != Some("xml") {
            self.declaration(namespace);
        }
    }

    /// A CDATA section; a `]]>` inside it splits it in two, as libxml2 does.
    fn cdata(&mut self, text: &str) {
        let mut start = 0;
        while let Some(found) = text[start..].find("]]>") {
            let end = start + found + 2;
            let _ = write!(self.out, "<![CDATA[{}]]>", &text[start..end]);
            start = end;
        }
        if start < text.len() || text.is_empty() {
            let _ = write!(self.out, "<![CDATA[{}]]>", &text[start..]);
        }
    }
}

/// libxml2's `xmlEscapeContent`.
fn escape_text(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// libxml2's `xmlBufAttrSerializeTxtContent`.
fn escape_attribute(out: &mut String, value: &str, escape_non_ascii: bool) {
    for c in value.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if escape_non_ascii && !c.is_ascii() => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// libxml2's `xmlBufWriteQuotedString`: double quotes unless the text holds one
/// and no single quote; with both, `"` becomes `&quot;`.
fn quoted(out: &mut String, text: &str) {
    if !text.contains('"') {
        let _ = write!(out, "\"{text}\"");
    } else if !text.contains('\'') {
        let _ = write!(out, "'{text}'");
    } else {
        let _ = write!(out, "\"{}\"", text.replace('"', "&quot;"));
    }
}
