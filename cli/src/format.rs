//! `--format`, as the docker CLI reads it: Go templates (the `gotmpl` crate, a port
//! of Go's `text/template`) with docker's extra functions, `table` output aligned as
//! Go's `tabwriter` aligns docker's, and `json`.
//!
//! Lists (`network ls`, `sandbox ls`) take:
//!
//! * `table` (the default): the command's default table, with a header; with `-q`
//!   only the ids, without a header.
//! * `table TEMPLATE`: TEMPLATE for each row, a header made by running TEMPLATE on
//!   the column titles, columns (cells ended by a tab, `\t` in the format) aligned.
//! * `json`: one JSON object per row (`{{json .}}`).
//! * any other TEMPLATE: run for each row, a newline after each; `-q` is ignored.
//!
//! A row is an object of strings with docker's keys (`.ID`, `.Name`, ...); a key
//! that is not there is an error, as a field docker does not have is. `inspect`
//! takes no format (the pretty JSON array), `json` (the same), or a TEMPLATE run on
//! each object as the daemon sent it (a missing key prints `<no value>`, as in Go).
//!
//! Functions besides Go's own (`index`, `len`, `printf`, `eq`, ...), as docker's:
//! `json`, `join`, `split`, `lower`, `upper`, `title`, `pad`, `truncate`. In a
//! table's header each of them gives back its first argument, as docker's do.

use gotmpl::{MissingKey, Template, TemplateError, Value};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::sync::Arc;

/// What `--format` asked for, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFormat {
    /// The template run for each row.
    pub template: String,
    /// Print a header and align columns.
    pub table: bool,
}

/// Docker's `Format` resolution for a list command: `format` as given (empty is
/// `table`), `quiet` from `-q`, the command's default table template.
pub fn list_format(format: &str, quiet: bool, default_table: &str) -> ListFormat {
    let (template, table) = match format {
        "" | "table" if quiet => ("{{.ID}}".to_string(), false),
        "" | "table" => (strip_table(default_table), true),
        "json" => ("{{json .}}".to_string(), false),
        f if f.starts_with("table") => (strip_table(f), true),
        f => (f.to_string(), false),
    };
    ListFormat {
        template: unescape(&template),
        table,
    }
}

fn strip_table(f: &str) -> String {
    f.strip_prefix("table")
        .unwrap_or(f)
        .trim_matches(' ')
        .to_string()
}

/// Docker replaces the two-character sequences `\t` and `\n` in a format.
fn unescape(f: &str) -> String {
    f.replace("\\t", "\t").replace("\\n", "\n")
}

/// A template error as docker prints one (`template parsing error: ...`).
#[derive(Debug)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// Docker's words for any template failure: `template parsing error: template: ...`.
fn template_error(e: TemplateError) -> anyhow::Error {
    let msg = e.to_string();
    let msg = if msg.starts_with("template:") {
        msg
    } else {
        format!("template: {msg}")
    };
    FormatError(format!("template parsing error: {msg}")).into()
}

/// Render rows: each row an object of docker's keys; `header` gives the column title
/// of each key (used for `table`).
pub fn render_list(
    f: &ListFormat,
    header: &[(&str, &str)],
    rows: &[Map<String, Json>],
) -> anyhow::Result<String> {
    let tmpl = parse(&f.template, MissingKey::Error, false)?;
    let mut body = String::new();
    for row in rows {
        let v = to_value(row)?;
        body.push_str(&tmpl.execute_to_string(&v).map_err(template_error)?);
        body.push('\n');
    }
    if !f.table {
        return Ok(body);
    }
    let titles: Map<String, Json> = header
        .iter()
        .map(|(k, t)| (k.to_string(), Json::String(t.to_string())))
        .collect();
    let head = parse(&f.template, MissingKey::Invalid, true)?;
    let mut text = head
        .execute_to_string(&to_value(&titles)?)
        .map_err(template_error)?;
    text.push('\n');
    text.push_str(&body);
    Ok(tabwrite(&text, 10, 3))
}

/// Parse a template (for `inspect`: missing keys print `<no value>`).
pub fn inspect_template(src: &str) -> anyhow::Result<Template> {
    parse(src, MissingKey::Invalid, false)
}

/// Run an `inspect` template on one object; a newline follows, as docker's.
pub fn render_one(t: &Template, obj: &Json) -> anyhow::Result<String> {
    let mut s = t
        .execute_to_string(&to_value(obj)?)
        .map_err(template_error)?;
    s.push('\n');
    Ok(s)
}

fn to_value<T: Serialize>(v: &T) -> anyhow::Result<Value> {
    gotmpl::to_value(v).map_err(template_error)
}

fn parse(src: &str, missing: MissingKey, header: bool) -> anyhow::Result<Template> {
    let t = Template::new("").missing_key(missing);
    let t = if header {
        [
            "json", "join", "split", "lower", "upper", "title", "pad", "truncate",
        ]
        .into_iter()
        .fold(t, |t, name| {
            t.func(name, |args: &[Value]| {
                Ok(args.first().cloned().unwrap_or(Value::Nil))
            })
        })
    } else {
        t.func("json", json_fn)
            .func("join", join_fn)
            .func("split", split_fn)
            .func("lower", |a: &[Value]| {
                map_str("lower", a, |s| s.to_lowercase())
            })
            .func("upper", |a: &[Value]| {
                map_str("upper", a, |s| s.to_uppercase())
            })
            .func("title", |a: &[Value]| map_str("title", a, title))
            .func("pad", pad_fn)
            .func("truncate", truncate_fn)
    };
    t.parse(src).map_err(template_error)
}

fn arity(name: &str, args: &[Value], n: usize) -> gotmpl::Result<()> {
    if args.len() == n {
        Ok(())
    } else {
        Err(TemplateError::ArgCount {
            name: name.to_string(),
            expected: n,
            got: args.len(),
        })
    }
}

fn string_arg<'a>(name: &str, v: &'a Value) -> gotmpl::Result<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(TemplateError::Exec(format!(
            "{name}: expected a string, got {other}"
        ))),
    }
}

fn int_arg(name: &str, v: &Value) -> gotmpl::Result<usize> {
    let n = match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        Value::Uint(u) => usize::try_from(*u).ok(),
        _ => None,
    };
    n.ok_or_else(|| TemplateError::Exec(format!("{name}: expected a count, got {v}")))
}

fn map_str(name: &str, args: &[Value], f: impl Fn(&str) -> String) -> gotmpl::Result<Value> {
    arity(name, args, 1)?;
    Ok(Value::String(f(string_arg(name, &args[0])?).into()))
}

/// Go's `json.Marshal` of a template value (docker's `json`).
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Uint(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.to_string()),
        Value::List(l) => Json::Array(l.iter().map(value_to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
        other => Json::String(other.to_string()),
    }
}

fn json_fn(args: &[Value]) -> gotmpl::Result<Value> {
    arity("json", args, 1)?;
    Ok(Value::String(value_to_json(&args[0]).to_string().into()))
}

/// `join LIST SEP`: the items (strings, or values printed as Go prints them).
fn join_fn(args: &[Value]) -> gotmpl::Result<Value> {
    arity("join", args, 2)?;
    let sep = string_arg("join", &args[1])?;
    let Value::List(items) = &args[0] else {
        return Err(TemplateError::Exec(format!(
            "join: expected a list, got {}",
            args[0]
        )));
    };
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    Ok(Value::String(parts.join(sep).into()))
}

/// `split STRING SEP`, as Go's `strings.Split` (an empty SEP splits characters).
fn split_fn(args: &[Value]) -> gotmpl::Result<Value> {
    arity("split", args, 2)?;
    let (s, sep) = (
        string_arg("split", &args[0])?,
        string_arg("split", &args[1])?,
    );
    let parts: Vec<Value> = if sep.is_empty() {
        s.chars()
            .map(|c| Value::String(c.to_string().into()))
            .collect()
    } else {
        s.split(sep).map(|p| Value::String(p.into())).collect()
    };
    Ok(Value::List(Arc::from(parts)))
}

/// `pad STRING BEFORE AFTER`: spaces around.
fn pad_fn(args: &[Value]) -> gotmpl::Result<Value> {
    arity("pad", args, 3)?;
    let s = string_arg("pad", &args[0])?;
    let (b, a) = (int_arg("pad", &args[1])?, int_arg("pad", &args[2])?);
    Ok(Value::String(
        format!("{}{s}{}", " ".repeat(b), " ".repeat(a)).into(),
    ))
}

/// `truncate STRING N`: at most N characters.
fn truncate_fn(args: &[Value]) -> gotmpl::Result<Value> {
    arity("truncate", args, 2)?;
    let s = string_arg("truncate", &args[0])?;
    let n = int_arg("truncate", &args[1])?;
    Ok(Value::String(s.chars().take(n).collect::<String>().into()))
}

/// Go's `strings.Title`: the first letter of each word upper-cased.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !(c.is_alphanumeric() || c == '_');
    }
    out
}

/// Align text as Go's `text/tabwriter` does with docker's settings (`minwidth`,
/// tab width 1, `padding`, pad with spaces, no flags): a cell is text ended by a
/// tab; the cells of one column, over consecutive lines that have it, are padded to
/// the widest plus `padding`, at least `minwidth`; a line's last cell is not padded.
pub fn tabwrite(text: &str, minwidth: usize, padding: usize) -> String {
    if text.is_empty() {
        return String::new();
    }
    let lines: Vec<Vec<&str>> = text
        .strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut w = TabWriter {
        lines: &lines,
        widths: Vec::new(),
        minwidth,
        padding,
        out: String::new(),
    };
    w.format(0, lines.len());
    w.out
}

struct TabWriter<'a> {
    lines: &'a [Vec<&'a str>],
    widths: Vec<usize>,
    minwidth: usize,
    padding: usize,
    out: String,
}

impl TabWriter<'_> {
    /// Go's `Writer.format`: find the column blocks of column `widths.len()` between
    /// `line0` and `line1`, recursively.
    fn format(&mut self, mut line0: usize, line1: usize) {
        let column = self.widths.len();
        let mut this = line0;
        while this < line1 {
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            self.write_lines(line0, this);
            line0 = this;
            let mut width = self.minwidth;
            while this < line1 && column + 1 < self.lines[this].len() {
                width = width.max(self.lines[this][column].chars().count() + self.padding);
                this += 1;
            }
            self.widths.push(width);
            self.format(line0, this);
            self.widths.pop();
            line0 = this;
        }
        self.write_lines(line0, line1);
    }

    fn write_lines(&mut self, line0: usize, line1: usize) {
        for line in &self.lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                self.out.push_str(cell);
                if j + 1 < line.len() {
                    if let Some(w) = self.widths.get(j) {
                        let pad = w.saturating_sub(cell.chars().count());
                        self.out.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            self.out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn row(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    fn rows() -> Vec<Map<String, Json>> {
        vec![
            row(
                json!({"ID": "0123456789ab", "Name": "bridge", "Driver": "bridge", "Scope": "local", "Labels": ""}),
            ),
            row(
                json!({"ID": "ba9876543210", "Name": "a-long-name", "Driver": "bridge", "Scope": "local", "Labels": "a=1,b=2"}),
            ),
        ]
    }

    const HEADER: &[(&str, &str)] = &[
        ("ID", "NETWORK ID"),
        ("Name", "NAME"),
        ("Driver", "DRIVER"),
        ("Scope", "SCOPE"),
        ("Labels", "LABELS"),
    ];
    const DEFAULT: &str = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}";

    fn render(format: &str, quiet: bool) -> String {
        render_list(&list_format(format, quiet, DEFAULT), HEADER, &rows()).unwrap()
    }

    #[test]
    fn default_table_is_dockers() {
        // Byte for byte what `docker network ls` prints (minwidth 10, padding 3).
        assert_eq!(
            render("", false),
            "NETWORK ID     NAME          DRIVER    SCOPE\n\
             0123456789ab   bridge        bridge    local\n\
             ba9876543210   a-long-name   bridge    local\n"
        );
        assert_eq!(render("table", false), render("", false));
        assert_eq!(render("", true), "0123456789ab\nba9876543210\n");
    }

    #[test]
    fn custom_table_and_templates() {
        assert_eq!(
            render("table {{.Name}}\\t{{.Labels}}", false),
            "NAME          LABELS\nbridge        \na-long-name   a=1,b=2\n"
        );
        // A template ignores -q; no header.
        assert_eq!(render("{{.Name}}", true), "bridge\na-long-name\n");
        assert_eq!(
            render(
                "{{.Name}}: {{range split .Labels \",\"}}[{{.}}]{{end}}",
                false
            ),
            "bridge: []\na-long-name: [a=1][b=2]\n"
        );
        assert_eq!(
            render(
                "{{join (split .Labels \",\") \"|\"}} {{truncate (upper .Name) 3}}",
                false
            ),
            " BRI\na=1|b=2 A-L\n"
        );
        assert_eq!(
            render("{{pad .Scope 1 2}}|{{title \"hello big-world\"}}", false),
            " local  |Hello Big-World\n local  |Hello Big-World\n"
        );
    }

    #[test]
    fn json_is_one_object_per_line_sorted() {
        assert_eq!(
            render("json", true).lines().next().unwrap(),
            r#"{"Driver":"bridge","ID":"0123456789ab","Labels":"","Name":"bridge","Scope":"local"}"#
        );
        assert_eq!(
            render("{{json .Name}}", false),
            "\"bridge\"\n\"a-long-name\"\n"
        );
    }

    #[test]
    fn errors_are_template_errors() {
        let bad = |f: &str| {
            render_list(&list_format(f, false, DEFAULT), HEADER, &rows())
                .unwrap_err()
                .to_string()
        };
        let e = bad("{{.Nope}}");
        assert_eq!(
            e,
            "template parsing error: template: map has no entry for key: Nope"
        );
        let e = bad("{{.Name");
        assert!(
            e.starts_with("template parsing error: template: ") && e.contains("unclosed action"),
            "{e}"
        );
        assert!(bad("{{nofunc .Name}}").contains("nofunc"));
    }

    #[test]
    fn inspect_templates_see_the_whole_object() {
        let obj = json!({"Name": "n", "IPAM": {"Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]},
                         "Labels": {"b": "2", "a": "1"}, "Containers": {}});
        let t = |s: &str| render_one(&inspect_template(s).unwrap(), &obj).unwrap();
        assert_eq!(
            t("{{range .IPAM.Config}}{{.Subnet}} via {{.Gateway}}{{end}}"),
            "10.0.0.0/24 via 10.0.0.1\n"
        );
        assert_eq!(t("{{index .Labels \"b\"}}"), "2\n");
        assert_eq!(t("{{json .Labels}}"), "{\"a\":\"1\",\"b\":\"2\"}\n");
        assert_eq!(t("{{len .Containers}} {{.Missing}}"), "0 <no value>\n");
        assert_eq!(t("{{.Labels}}"), "map[a:1 b:2]\n");
    }

    #[test]
    fn tabwriter_like_go() {
        assert_eq!(tabwrite("a\tb\tc\n", 1, 1), "a b c\n");
        assert_eq!(tabwrite("a\tb\n", 10, 3), "a         b\n");
        // A trailing tab pads the cell before it.
        assert_eq!(tabwrite("aa\t\nb\tx\n", 0, 1), "aa \nb  x\n");
        // A line without cells ends the column block.
        assert_eq!(
            tabwrite("a\tb\nxyz\nlonger\tc\n", 0, 1),
            "a b\nxyz\nlonger c\n"
        );
        assert_eq!(tabwrite("", 10, 3), "");
        assert_eq!(tabwrite("é\tx\n", 0, 1), "é x\n");
    }
}
