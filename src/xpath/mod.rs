//! `net-dumpxml --xpath EXPR [--wrap]`, as virsh 9.0's `virshDumpXML` does it: the
//! network's XML is read as libxml2 reads it (blank text between elements
//! dropped), EXPR is evaluated with the document element as context node, and
//! each node of the resulting node-set is written as `xmlNodeDump` writes it,
//! one per line, or all of them inside a `<nodes>` element (`--wrap`).
//!
//! virsh fails only when EXPR's value is not a node-set. An expression libxml2
//! cannot compile or evaluate selects nothing: libxml2 complains on stderr
//! (`XPath error : Invalid expression`) and the command still succeeds. Those
//! complaints are reproduced here for the mistakes libxml2 names (see
//! [`Diagnostic`]).

mod serialize;
mod tree;

use std::cell::Cell;

use xpath_eval::{
    EvalError, EvaluationContext, Expr, FilterExpr, LocationPath, NodeTest, PathExpr, PrimaryExpr,
    Value,
};

use tree::{Tree, XML_NAMESPACE, XNode};

/// Why `--xpath` fails the command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EXPR's value is a string, number or boolean, not a node-set.
    #[error("internal error: Incorrect xpath '{0}'")]
    NotNodeSet(String),
    /// The daemon's XML could not be read (it always can).
    #[error("XML error: {0}")]
    Xml(#[from] tree::ParseError),
    /// The evaluation's thread could not be started, or failed.
    #[error("internal error: cannot evaluate the expression: {0}")]
    Evaluation(String),
}

/// What `net-dumpxml --xpath` prints: the results, and what libxml2 says on
/// stderr when it cannot compile or evaluate the expression.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub stdout: String,
    pub stderr: String,
}

/// The nodes `expr` selects in `xml`, written as virsh writes them.
pub fn dump(xml: &str, expr: &str, wrap: bool) -> Result<Dump, Error> {
    let tree = Tree::parse(xml)?;
    let nodes = match select_on_own_stack(&tree, expr)? {
        Ok(Some(nodes)) => nodes,
        Ok(None) => return Err(Error::NotNodeSet(expr.to_owned())),
        Err(diagnostic) => {
            // virsh takes a failed evaluation for an empty node-set.
            return Ok(Dump {
                stdout: if wrap {
                    "<nodes/>\n".to_owned()
                } else {
                    String::new()
                },
                stderr: diagnostic.render(expr),
            });
        }
    };
    let stdout = if wrap {
        format!("{}\n", serialize::wrapped(&tree, &nodes))
    } else {
        nodes
            .iter()
            .map(|&node| {
                // virsh prints a NULL string as "(null)".
                let text = serialize::node_to_string(&tree, node);
                format!("{}\n", text.as_deref().unwrap_or("(null)"))
            })
            .collect()
    };
    Ok(Dump {
        stdout,
        stderr: String::new(),
    })
}

/// What [`select`] gives: a node-set, `None` for another value, or libxml2's complaint.
type Selection<'a> = Result<Option<Vec<XNode<'a>>>, Diagnostic>;

/// The stack [`select`] runs on. Parsing, evaluating and dropping an expression
/// recurse once per level of nesting and per operator; [`too_deep`] bounds both,
/// and this stack holds the deepest expression it lets through with room to spare
/// (a debug build needs under half of it), whatever stack the caller has.
const SELECT_STACK: usize = 64 << 20;

fn select_on_own_stack<'a>(tree: &'a Tree, expr: &str) -> Result<Selection<'a>, Error> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("xpath".to_owned())
            .stack_size(SELECT_STACK)
            .spawn_scoped(scope, || select(tree, expr))
            .map_err(|e| Error::Evaluation(e.to_string()))?
            .join()
            .map_err(|_| Error::Evaluation("the evaluation failed".to_owned()))
    })
}

/// Nesting (of parentheses, predicates and calls) at which libxml2 stops with
/// "Recursion limit exceeded".
const MAX_NESTING: usize = 500;

/// The longest expression kvnet evaluates; libxml2 has no such limit. An
/// expression's tree is at most about as deep as it is long.
const MAX_LENGTH: usize = 4096;

/// Whether `expr` nests as deep as libxml2 refuses (literals aside), or is longer
/// than kvnet evaluates.
fn too_deep(expr: &str) -> bool {
    if expr.len() > MAX_LENGTH {
        return true;
    }
    let mut depth = 0usize;
    let mut quote = None;
    for c in expr.chars() {
        match (quote, c) {
            (Some(open), _) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => {
                depth += 1;
                if depth >= MAX_NESTING {
                    return true;
                }
            }
            (None, ')' | ']') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    false
}

/// Evaluates `expr` from the document element: the node-set in document order,
/// `None` for any other value, or what libxml2 would complain about.
fn select<'a>(tree: &'a Tree, expr: &str) -> Selection<'a> {
    if too_deep(expr) {
        return Err(Diagnostic::xpath(XPathError::RecursionLimit));
    }
    let ast = xpath_eval::parse(expr).map_err(|error| Diagnostic::from_parse(expr, &error))?;
    // libxml2 looks a step's prefix up whenever it evaluates the step, even on
    // an empty node-set; predicates are evaluated per node, and lazily below.
    if undefined_prefix_on_path(&ast) {
        return Err(Diagnostic::xpath(XPathError::UndefinedPrefix));
    }
    let root = tree
        .root_element()
        .ok_or(Diagnostic::xpath(XPathError::InvalidExpression))?;
    let undefined = Cell::new(false);
    let lookup = |prefix: &str| {
        if prefix == "xml" {
            Some(XML_NAMESPACE.to_owned())
        } else {
            undefined.set(true);
            None
        }
    };
    let mut context = EvaluationContext::new(XNode::new(tree, root));
    context.namespaces = Some(&lookup);
    let value = xpath_eval::evaluate(&ast, &context);
    if undefined.get() {
        return Err(Diagnostic::xpath(XPathError::UndefinedPrefix));
    }
    match value.map_err(Diagnostic::from_eval)? {
        Value::NodeSet(nodes) => Ok(Some(nodes)),
        Value::Boolean(_) | Value::Number(_) | Value::String(_) => Ok(None),
    }
}

/// Whether a name test that libxml2 would evaluate in any case (one outside
/// predicates and outside the right side of `and`/`or`) uses a prefix other than
/// `xml`, the only one virsh's XPath context knows.
fn undefined_prefix_on_path(expr: &Expr) -> bool {
    match expr {
        Expr::Or(left, _) | Expr::And(left, _) => undefined_prefix_on_path(left),
        Expr::Equality(left, _, right)
        | Expr::Relational(left, _, right)
        | Expr::Additive(left, _, right)
        | Expr::Multiplicative(left, _, right)
        | Expr::Union(left, right) => {
            undefined_prefix_on_path(left) || undefined_prefix_on_path(right)
        }
        Expr::Negate(inner) => undefined_prefix_on_path(inner),
        Expr::Path(PathExpr::Location(path)) => undefined_prefix_in_steps(path),
        Expr::Path(PathExpr::Filter(filter)) => undefined_prefix_in_primary(filter),
        Expr::Path(PathExpr::FilterLocation(filter, path)) => {
            undefined_prefix_in_primary(filter) || undefined_prefix_in_steps(path)
        }
    }
}

fn undefined_prefix_in_steps(path: &LocationPath) -> bool {
    path.steps.iter().any(|step| match &step.node_test {
        NodeTest::QName(name) => name.prefix.as_deref().is_some_and(|prefix| prefix != "xml"),
        NodeTest::NamespaceWildcard(prefix) => prefix != "xml",
        _ => false,
    })
}

fn undefined_prefix_in_primary(filter: &FilterExpr) -> bool {
    match &filter.primary {
        PrimaryExpr::Parenthesized(inner) => undefined_prefix_on_path(inner),
        PrimaryExpr::Function(call) => call.args.iter().any(undefined_prefix_on_path),
        PrimaryExpr::Variable(_) | PrimaryExpr::Literal(_) | PrimaryExpr::Number(_) => false,
    }
}

/// libxml2's XPath error messages (`xmlXPathErrorMessages`) that kvnet reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XPathError {
    UnfinishedLiteral,
    StartOfLiteral,
    VariableReference,
    UndefinedVariable,
    InvalidPredicate,
    InvalidExpression,
    InvalidType,
    InvalidArity,
    InvalidFunction,
    UnclosedNodeTest,
    UndefinedPrefix,
    RecursionLimit,
}

impl XPathError {
    fn message(self) -> &'static str {
        match self {
            XPathError::UnfinishedLiteral => "Unfinished literal",
            XPathError::StartOfLiteral => "Start of literal",
            XPathError::VariableReference => "Expected $ for variable reference",
            XPathError::UndefinedVariable => "Undefined variable",
            XPathError::InvalidPredicate => "Invalid predicate",
            XPathError::InvalidExpression => "Invalid expression",
            XPathError::InvalidType => "Invalid type",
            XPathError::InvalidArity => "Invalid number of arguments",
            XPathError::InvalidFunction => "Unregistered function",
            // libxml2's message for XPATH_UNCLOSED_ERROR, whatever was left open.
            XPathError::UnclosedNodeTest => "Missing closing curly brace",
            XPathError::UndefinedPrefix => "Undefined namespace prefix",
            XPathError::RecursionLimit => "Recursion limit exceeded",
        }
    }
}

/// What libxml2 writes to stderr when it cannot compile or evaluate an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Diagnostic {
    /// `XPath error : MESSAGE` for each error, each followed by the expression and
    /// a caret under byte `at` when there is one.
    XPath(Vec<XPathError>, Option<usize>),
    /// A call of a function libxml2 does not have.
    UnknownFunction(String),
    /// A call of `prefix:name()` with an undefined prefix.
    UnboundFunction { prefix: String, name: String },
}

/// libxml2 shows where an expression went wrong only before its end, and only
/// within its first 100 bytes.
const CARET_LIMIT: usize = 100;

/// XPath's node type tests, which libxml2 parses apart from function calls.
const NODE_TYPES: [&str; 4] = ["node", "text", "comment", "processing-instruction"];

impl Diagnostic {
    fn xpath(kind: XPathError) -> Diagnostic {
        Diagnostic::XPath(vec![kind], None)
    }

    fn from_parse(expr: &str, error: &xpath_eval::ParseError) -> Diagnostic {
        let message = error.message.as_str();
        let before = expr.get(..error.position).unwrap_or(expr).trim_end();
        let node_type = before
            .strip_suffix('(')
            .map(str::trim_end)
            .and_then(|name| NODE_TYPES.iter().find(|&&test| ends_with_name(name, test)));
        let (kinds, at) = if message == "empty expression" {
            (vec![XPathError::InvalidExpression], expr.len())
        } else if message.contains("unterminated string literal") {
            // libxml2 reads on to the end looking for the closing quote.
            (vec![XPathError::UnfinishedLiteral], expr.len())
        } else if message.starts_with("expected a name after '$'") {
            (vec![XPathError::VariableReference], error.position + 1)
        } else if message.ends_with("expected ')'") && node_type.is_some() {
            let kinds = if node_type == Some(&"processing-instruction") {
                // libxml2 wants the target as a literal, then gives up on the step.
                vec![XPathError::StartOfLiteral, XPathError::InvalidExpression]
            } else {
                vec![XPathError::UnclosedNodeTest]
            };
            (kinds, error.position)
        } else if message.ends_with("expected ']'") {
            (vec![XPathError::InvalidPredicate], error.position)
        } else {
            (vec![XPathError::InvalidExpression], error.position)
        };
        let at = Some(at).filter(|&at| at < expr.len() && at < CARET_LIMIT);
        Diagnostic::XPath(kinds, at)
    }

    fn from_eval(error: EvalError) -> Diagnostic {
        match error {
            EvalError::UnknownFunction(name) => match name.prefix {
                Some(prefix) if prefix != "xml" => Diagnostic::UnboundFunction {
                    prefix,
                    name: name.local,
                },
                _ => Diagnostic::UnknownFunction(name.local),
            },
            EvalError::UnboundVariable(_) => Diagnostic::xpath(XPathError::UndefinedVariable),
            EvalError::ArgumentCount { .. } => Diagnostic::xpath(XPathError::InvalidArity),
            EvalError::ExpectedNodeSet { .. } => Diagnostic::xpath(XPathError::InvalidType),
        }
    }

    /// The lines libxml2 prints for `expr`.
    fn render(&self, expr: &str) -> String {
        let line = |kind: &XPathError| format!("XPath error : {}\n", kind.message());
        match self {
            Diagnostic::XPath(kinds, at) => kinds
                .iter()
                .map(|kind| match at {
                    Some(at) => format!("{}{expr}\n{}^\n", line(kind), " ".repeat(*at)),
                    None => line(kind),
                })
                .collect(),
            Diagnostic::UnknownFunction(name) => format!(
                "xmlXPathCompOpEval: function {name} not found\n{}",
                line(&XPathError::InvalidFunction)
            ),
            Diagnostic::UnboundFunction { prefix, name } => {
                format!("xmlXPathCompOpEval: function {name} bound to undefined prefix {prefix}\n")
            }
        }
    }
}

/// Whether `text` ends with the name `name` (not merely with its last letters).
fn ends_with_name(text: &str, name: &str) -> bool {
    text.strip_suffix(name).is_some_and(|rest| {
        !rest
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    })
}

#[cfg(test)]
mod tests;
