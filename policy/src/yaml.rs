//! The YAML layer: turns the text into a small tree of scalars, sequences and
//! mappings where every node knows its line and column. Built on the event
//! stream of `saphyr-parser` so that duplicate keys and aliases are seen (a
//! map type would silently keep one of two `allow:` keys).

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::diagnostic::{Pos, Sink};

/// Deeper nesting than this is certainly not a policy; refusing it keeps the
/// tree builder's recursion bounded on hostile input.
const MAX_DEPTH: usize = 32;

/// One node of the document with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) at: Pos,
    pub(crate) kind: Kind,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar. `plain` is false when it was quoted or a block scalar, which
    /// matters for `~`/`null`/empty meaning "nothing".
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicates kept (the schema reports them).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub(crate) fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for a plain `~`, `null`, `Null`, `NULL` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short name of the node's shape for messages.
    pub(crate) fn shape(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "nothing",
            Kind::Scalar { .. } => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        col: u32::try_from(span.start.col().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

/// Parse `text` into one document. Syntax problems go to `sink`; `None` when
/// the text is not usable YAML or holds no document.
pub(crate) fn load(text: &str, sink: &mut Sink) -> Option<Node> {
    let mut events = Parser::new_from_str(text);
    let mut root = None;
    let mut docs = 0u32;
    loop {
        let (event, span) = match events.next() {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                scan_error(&e, text, sink);
                return None;
            }
        };
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    sink.error(
                        pos(&span),
                        "a policy file holds one YAML document; remove the second `---` and what follows, or merge them",
                    );
                    return None;
                }
            }
            other => {
                let node = build(other, span, &mut events, text, sink, 0)?;
                root = Some(node);
            }
        }
    }
    root
}

fn scan_error(e: &saphyr_parser::ScanError, text: &str, sink: &mut Sink) {
    let m = e.marker();
    sink.error(
        within(text, m.line(), m.col().saturating_add(1)),
        format!("this is not valid YAML: {}", e.info()),
    );
}

/// A position the scanner reports past the end of the text (it does so for
/// "unexpected end of file") is moved to just after the last character, so
/// the message points at a line the person can see.
fn within(text: &str, line: usize, col: usize) -> Pos {
    let normalised = text.replace("\r\n", "\n");
    let last_line = normalised.split(['\n', '\r']).count();
    let (line, col) = if line > last_line {
        let tail = normalised.rsplit(['\n', '\r']).next().unwrap_or("");
        (last_line, tail.chars().count() + 1)
    } else {
        (line, col)
    };
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        col: u32::try_from(col).unwrap_or(u32::MAX),
    }
}

fn next_event<'a>(
    events: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    text: &str,
    sink: &mut Sink,
) -> Option<(Event<'a>, Span)> {
    match events.next() {
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => {
            scan_error(&e, text, sink);
            None
        }
        None => None,
    }
}

fn build<'a>(
    event: Event<'a>,
    span: Span,
    events: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    text: &str,
    sink: &mut Sink,
    depth: usize,
) -> Option<Node> {
    let at = pos(&span);
    if depth > MAX_DEPTH {
        sink.error(
            at,
            format!("nested more than {MAX_DEPTH} levels deep; a policy never needs that"),
        );
        return None;
    }
    match event {
        Event::Scalar(text, style, _, _) => Some(Node {
            at,
            kind: Kind::Scalar {
                text: text.into_owned(),
                plain: style == ScalarStyle::Plain,
            },
        }),
        Event::Alias(_) => {
            sink.error(
                at,
                "YAML aliases (`*name`) are not supported in a policy; write the value out in full",
            );
            // Stand in an empty value so the rest of the file is still checked.
            Some(Node {
                at,
                kind: Kind::Scalar {
                    text: String::new(),
                    plain: true,
                },
            })
        }
        Event::SequenceStart(_, _) => {
            let mut items = Vec::new();
            loop {
                let (e, s) = next_event(events, text, sink)?;
                if matches!(e, Event::SequenceEnd) {
                    break;
                }
                items.push(build(e, s, events, text, sink, depth + 1)?);
            }
            Some(Node {
                at,
                kind: Kind::Seq(items),
            })
        }
        Event::MappingStart(_, _) => {
            let mut pairs = Vec::new();
            loop {
                let (e, s) = next_event(events, text, sink)?;
                if matches!(e, Event::MappingEnd) {
                    break;
                }
                let key = build(e, s, events, text, sink, depth + 1)?;
                let (e, s) = next_event(events, text, sink)?;
                let value = build(e, s, events, text, sink, depth + 1)?;
                pairs.push((key, value));
            }
            Some(Node {
                at,
                kind: Kind::Map(pairs),
            })
        }
        _ => {
            sink.error(at, "unexpected YAML structure here");
            None
        }
    }
}
