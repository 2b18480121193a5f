//! A minimal element tree read with quick-xml, keeping source lines so later
//! errors can point at the offending element.

use std::collections::HashSet;

use quick_xml::Reader;
use quick_xml::escape::{resolve_predefined_entity, unescape_with};
use quick_xml::events::{BytesStart, Event};

use super::Error;

/// One element: qualified name, attributes in document order, child
/// elements, and the concatenated character data directly inside it.
#[derive(Debug, Clone)]
pub(crate) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub line: u64,
}

impl Element {
    /// Value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Deepest element nesting accepted. The network schema needs 5 levels;
/// the cap keeps hostile documents from building trees whose recursive drop
/// could exhaust the stack.
const MAX_DEPTH: usize = 32;

/// Converts a byte offset into 1-based (line, column).
fn line_col(input: &str, offset: u64) -> (u64, u64) {
    let offset = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(input.len());
    let before = &input.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line as u64, column as u64)
}

/// Line numbers of tag starts, counted incrementally: tags arrive in
/// document order, so each byte is scanned once instead of once per tag
/// (recounting from the start made parsing quadratic in the input size).
struct LineTracker {
    offset: usize,
    line: u64,
}

impl LineTracker {
    fn new() -> LineTracker {
        LineTracker { offset: 0, line: 1 }
    }

    /// 1-based line of byte `offset`; offsets must not go backwards.
    fn line_at(&mut self, input: &str, offset: usize) -> u64 {
        let offset = offset.min(input.len());
        if offset < self.offset {
            // Not expected from the reader; stay correct rather than fast.
            *self = LineTracker::new();
        }
        let newlines = input.as_bytes()[self.offset..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line += newlines as u64;
        self.offset = offset;
        self.line
    }
}

/// True for characters XML 1.0 allows in a document (its `Char` production): no
/// control characters but tab, newline and carriage return, written out or as a
/// character reference. libxml2, and so libvirt, refuses a document with any other.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// Refuses text or an attribute value holding a character XML 1.0 does not allow;
/// `place` says where, e.g. `in <name>`.
fn check_chars(input: &str, offset: u64, text: &str, place: &str) -> Result<(), Error> {
    match text.chars().find(|&c| !is_xml_char(c)) {
        Some(c) => Err(malformed(
            input,
            offset,
            format!(
                "character U+{:04X} {place} is not allowed in XML 1.0",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

fn malformed(input: &str, offset: u64, reason: impl Into<String>) -> Error {
    let (line, column) = line_col(input, offset);
    Error::Malformed {
        document: "network",
        line,
        column,
        reason: reason.into(),
    }
}

/// [`parse_document`] for a document that is no network definition: `document` names it
/// in the error (`network port`, `update`).
pub(crate) fn parse_document_of(input: &str, document: &'static str) -> Result<Element, Error> {
    parse_document(input).map_err(|e| match e {
        Error::Malformed {
            line,
            column,
            reason,
            ..
        } => Error::Malformed {
            document,
            line,
            column,
            reason,
        },
        other => other,
    })
}

/// Parses `input` into its single root element. Comments, the XML
/// declaration and processing instructions are skipped (libvirt's config
/// files start with a warning comment); a DOCTYPE is refused.
pub(crate) fn parse_document(input: &str) -> Result<Element, Error> {
    let mut reader = Reader::from_str(input);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut lines = LineTracker::new();

    loop {
        let before = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| malformed(input, reader.error_position(), e.to_string()))?;
        let mut tag_line = |reader: &Reader<&[u8]>| {
            // The tag's '<' is the first one after the previous event; only
            // this tag's bytes are searched.
            let from = usize::try_from(before)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let end = usize::try_from(reader.buffer_position())
                .unwrap_or(usize::MAX)
                .clamp(from, input.len());
            let start = input.as_bytes()[from..end]
                .iter()
                .position(|&b| b == b'<')
                .map_or(from, |at| from + at);
            lines.line_at(input, start)
        };
        match event {
            Event::Start(start) => {
                let element = start_element(input, &reader, &start, tag_line(&reader))?;
                if stack.is_empty() && root.is_some() {
                    return Err(malformed(input, before, "content after the root element"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed(input, before, "elements nested too deeply"));
                }
                stack.push(element);
            }
            Event::Empty(start) => {
                let element = start_element(input, &reader, &start, tag_line(&reader))?;
                attach(input, before, &mut stack, &mut root, element)?;
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| malformed(input, before, "unexpected end tag"))?;
                attach(input, before, &mut stack, &mut root, element)?;
            }
            Event::Text(text) => {
                let text = text
                    .xml10_content()
                    .map_err(|e| malformed(input, before, e.to_string()))?;
                push_text(input, before, &mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data
                    .xml10_content()
                    .map_err(|e| malformed(input, before, e.to_string()))?;
                push_text(input, before, &mut stack, &text)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| malformed(input, before, e.to_string()))?
                        .map(String::from)
                } else {
                    let name = reference
                        .decode()
                        .map_err(|e| malformed(input, before, e.to_string()))?;
                    resolve_predefined_entity(&name).map(str::to_string)
                };
                let text = resolved.ok_or_else(|| {
                    malformed(input, before, "unknown entity reference".to_string())
                })?;
                push_text(input, before, &mut stack, &text)?;
            }
            Event::DocType(_) => {
                return Err(malformed(input, before, "DOCTYPE is not allowed"));
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(malformed(
            input,
            input.len() as u64,
            format!("unexpected end of document, <{}> is not closed", open.name),
        ));
    }
    root.ok_or_else(|| malformed(input, input.len() as u64, "no root element"))
}

fn start_element(
    input: &str,
    reader: &Reader<&[u8]>,
    start: &BytesStart<'_>,
    line: u64,
) -> Result<Element, Error> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    // quick-xml's own duplicate check compares each attribute with every
    // earlier one, quadratic in the attributes of one element; a set is not.
    let mut seen_keys = HashSet::new();
    for attr in start.attributes().with_checks(false) {
        let attr = attr.map_err(|e| malformed(input, reader.buffer_position(), e.to_string()))?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        if !seen_keys.insert(key.clone()) {
            return Err(malformed(
                input,
                reader.buffer_position(),
                format!("duplicated attribute '{key}' on <{name}>"),
            ));
        }
        let raw = reader
            .decoder()
            .decode(&attr.value)
            .map_err(|e| malformed(input, reader.buffer_position(), e.to_string()))?;
        let value = unescape_with(
            &normalize_attribute_whitespace(&raw),
            resolve_predefined_entity,
        )
        .map_err(|e| malformed(input, reader.buffer_position(), e.to_string()))?
        .into_owned();
        check_chars(
            input,
            reader.buffer_position(),
            &value,
            &format!("in attribute '{key}' of <{name}>"),
        )?;
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
        line,
    })
}

/// XML 1.0 attribute-value normalization (sections 2.11 and 3.3.3), as libxml2 does
/// it: a line end (`\r\n`, `\r` or `\n`) or a tab written out in the value becomes
/// one space. Character references (`&#10;`) are resolved afterwards and so kept.
fn normalize_attribute_whitespace(raw: &str) -> String {
    raw.replace("\r\n", " ").replace(['\r', '\n', '\t'], " ")
}

fn attach(
    input: &str,
    offset: u64,
    stack: &mut [Element],
    root: &mut Option<Element>,
    element: Element,
) -> Result<(), Error> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => return Err(malformed(input, offset, "content after the root element")),
    }
    Ok(())
}

fn push_text(input: &str, offset: u64, stack: &mut [Element], text: &str) -> Result<(), Error> {
    let place = stack.last().map_or_else(
        || "outside the root element".to_string(),
        |e| format!("in <{}>", e.name),
    );
    check_chars(input, offset, text, &place)?;
    match stack.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err(malformed(input, offset, "text outside the root element")),
    }
    Ok(())
}
