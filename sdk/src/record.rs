//! [`Record`]: a JSON object whose top-level fields stay JSON text until a plugin asks for them,
//! for plugins that rename, drop or add fields and would otherwise spend their time building and
//! re-serializing a whole [`Value`] per record (see [`crate::Node::transform_json`]).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Value;

/// Room for this many fields is made when a record is parsed and no list is spare.
const FIELDS: usize = 8;

/// A dropped record's field list is kept for the next record only up to this many fields, so
/// that one very wide record does not hold its memory for the rest of the instance's life.
const SPARE_FIELDS: usize = 256;

thread_local! {
    /// The field list of the last record dropped, emptied, for the next record read to fill: a
    /// plugin reads its records one after another, so each after the first is read without
    /// allocating its list (a plugin's instance runs one thread).
    static SPARE: Cell<Vec<Entry<'static>>> = const { Cell::new(Vec::new()) };
}

/// An empty field list for a record being read: the spare one when there is one.
fn field_list<'a>() -> Vec<Entry<'a>> {
    let spare = SPARE.take();
    if spare.capacity() == 0 {
        Vec::with_capacity(FIELDS)
    } else {
        spare
    }
}

/// One record as its top-level fields, in their original order, each value still the exact JSON
/// text it arrived as (nested objects and arrays are checked but never built).
///
/// Reading a field parses only that field; writing the record out copies untouched values
/// verbatim. Duplicate keys keep the last value, as [`Value`] does. Names and strings the plugin
/// writes are borrowed when they live as long as the record's text (a `&'static str`, or the
/// plugin's config parsed once per batch) and copied when they are `String`s.
///
/// ```
/// use trellis_sdk::Record;
///
/// let text = r#"{"first":"Ada","last":"Lovelace","active":true}"#;
/// let mut record = Record::parse(text).unwrap();
/// record.rename("active", "is_active");
/// let name = format!("{} {}", record.str("first").unwrap().unwrap(), record.str("last").unwrap().unwrap());
/// record.insert_str("full_name", name);
/// assert_eq!(
///     record.to_json(),
///     r#"{"first":"Ada","last":"Lovelace","is_active":true,"full_name":"Ada Lovelace"}"#
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    fields: Vec<Entry<'a>>,
    /// The text the record was scanned from (empty when serde_json read it), which the fields
    /// it has not changed are copied from whole ([`Entry::span`]).
    text: &'a str,
    /// One bit per name in the record, by [`name_bit`]: a name whose bit is clear is not here,
    /// so most lookups of a missing name, and the check for a repeated name as a record is
    /// read, compare no names. Bits are never cleared (a removed name may leave its bit set).
    names: u64,
}

/// One field: its name, whether the name can be written out without escapes (checked once,
/// when the name is read or set), and its value.
#[derive(Debug, Clone)]
struct Entry<'a> {
    key: Cow<'a, str>,
    plain: bool,
    value: Field<'a>,
    /// Where the field's compact text (`"name":value`, exactly as [`Record::to_json`] writes
    /// it) is in [`Record::text`], while neither its name nor its value has changed; `None`
    /// otherwise. Fields that follow each other there are written out with one copy.
    span: Option<(usize, usize)>,
}

impl<'a> Entry<'a> {
    fn new(key: Cow<'a, str>, value: Field<'a>) -> Entry<'a> {
        let plain = !needs_escape(&key);
        Entry {
            key,
            plain,
            value,
            span: None,
        }
    }
}

/// A field's value: JSON text borrowed from the input or written by the plugin (in the field
/// itself when it is short, as a number usually is), or a string the plugin set, escaped only
/// when the record is written out.
#[derive(Debug, Clone)]
enum Field<'a> {
    Raw(&'a str),
    Json(String),
    Short(Short),
    Str(Cow<'a, str>),
}

/// JSON text of at most [`Short::CAPACITY`] bytes, kept without an allocation of its own (in a
/// plugin an allocation and its free cost several hundred instructions).
#[derive(Debug, Clone)]
struct Short {
    len: u8,
    bytes: [u8; Short::CAPACITY],
}

impl Short {
    const CAPACITY: usize = 22;

    /// `value` as JSON text, when it fits; `None` when it does not (or fails to serialize).
    fn write(value: &impl Serialize) -> Option<Short> {
        let mut bytes = [0; Short::CAPACITY];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        serde_json::to_writer(&mut cursor, value).ok()?;
        let len = usize::try_from(cursor.position()).ok()?;
        // serde_json writes UTF-8; checked once here, so `as_str` never fails.
        std::str::from_utf8(&bytes[..len]).ok()?;
        Some(Short {
            len: u8::try_from(len).ok()?,
            bytes,
        })
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("null")
    }
}

impl Field<'_> {
    fn json(&self) -> Cow<'_, str> {
        match self {
            Field::Raw(raw) => Cow::Borrowed(raw),
            Field::Json(text) => Cow::Borrowed(text),
            Field::Short(short) => Cow::Borrowed(short.as_str()),
            Field::Str(text) => {
                let mut json = String::with_capacity(text.len() + 2);
                push_json_str(&mut json, text);
                Cow::Owned(json)
            }
        }
    }

    fn push_json(&self, out: &mut String) {
        match self {
            Field::Raw(raw) => out.push_str(raw),
            Field::Json(text) => out.push_str(text),
            Field::Short(short) => out.push_str(short.as_str()),
            Field::Str(text) => push_json_str(out, text),
        }
    }

    /// An upper bound of the JSON text's length, for sizing the output once.
    fn json_len(&self) -> usize {
        match self {
            Field::Raw(raw) => raw.len(),
            Field::Json(text) => text.len(),
            Field::Short(short) => usize::from(short.len),
            Field::Str(text) => text.len() + 2,
        }
    }
}

impl<'a> Record<'a> {
    /// Parses one record; anything but a JSON object is an error.
    ///
    /// A record whose names have no escapes is read by one scan of its text; any other record,
    /// and any text the scan does not accept, by serde_json, which also gives the error.
    pub fn parse(text: &'a str) -> Result<Record<'a>, String> {
        if let Some(record) = scan(text) {
            return Ok(record);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let record = Record::deserialize(&mut de).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(record)
    }

    /// How many fields the record has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the record has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The field names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|e| e.key.as_ref())
    }

    /// Where the field called `key` is. The test of its name's bit is inlined: most names a
    /// record is asked for while it is read are not in it yet.
    #[inline(always)]
    fn position(&self, key: &str) -> Option<usize> {
        if self.names & name_bit(key) == 0 {
            return None;
        }
        self.find(key)
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|e| same(&e.key, key))
    }

    /// Appends a field whose name is not in the record yet.
    #[inline]
    fn push(&mut self, entry: Entry<'a>) {
        self.names |= name_bit(&entry.key);
        self.fields.push(entry);
    }

    /// The JSON text of a field's value (`None` when the field is missing). Borrowed, except for
    /// a string set with [`Record::insert_str`], which is escaped here.
    pub fn raw(&self, key: &str) -> Option<Cow<'_, str>> {
        self.position(key).map(|i| self.fields[i].value.json())
    }

    /// A field's value, parsed (`None` when the field is missing).
    pub fn get(&self, key: &str) -> Option<Value> {
        let field = &self.fields[self.position(key)?].value;
        if let Field::Str(text) = field {
            return Some(Value::String(text.as_ref().to_owned()));
        }
        // The text was checked when the record was parsed or the field was written.
        Some(serde_json::from_str(&field.json()).unwrap_or(Value::Null))
    }

    /// A string field without copying it when it has no escapes. `Ok(None)` when the field is
    /// missing or null; an error naming the field when it holds anything else.
    pub fn str(&self, key: &str) -> Result<Option<Cow<'_, str>>, String> {
        let Some(i) = self.position(key) else {
            return Ok(None);
        };
        let json = match &self.fields[i].value {
            Field::Str(text) => return Ok(Some(Cow::Borrowed(text))),
            Field::Raw(raw) => *raw,
            Field::Json(text) => text.as_str(),
            Field::Short(short) => short.as_str(),
        };
        if json == "null" {
            return Ok(None);
        }
        // A checked string with no `\\` in it is its own value. `plain_run` stops at nothing
        // else in a checked string, and looks at eight bytes at a time where `contains` calls
        // `memchr`.
        if let Some(inner) = json.strip_prefix('"').and_then(|s| s.strip_suffix('"'))
            && plain_run(inner.as_bytes(), 0) == inner.len()
        {
            return Ok(Some(Cow::Borrowed(inner)));
        }
        match serde_json::from_str::<String>(json) {
            Ok(text) => Ok(Some(Cow::Owned(text))),
            // Which kind of value, never the value: records may hold secrets, and the host logs
            // plugin errors (as `decode` does).
            Err(_) => Err(format!(
                "field `{key}`: invalid type: {}, expected a string",
                match json.as_bytes().first() {
                    Some(b'{') => "object",
                    Some(b'[') => "array",
                    Some(b't' | b'f') => "boolean",
                    Some(b'"') => "string with an invalid escape",
                    _ => "number",
                }
            )),
        }
    }

    /// Removes a field and gives back its JSON text.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.position(key)?;
        Some(self.fields.remove(i).value.json().into_owned())
    }

    /// Renames a field in place; a field already called `to` is replaced, as with a map's
    /// remove-then-insert. Returns whether `from` was there.
    pub fn rename(&mut self, from: &str, to: impl Into<Cow<'a, str>>) -> bool {
        let Some(i) = self.position(from) else {
            return false;
        };
        let to = to.into();
        if from == to {
            return true;
        }
        let i = match self.position(&to) {
            Some(j) => {
                self.fields.remove(j);
                if j < i { i - 1 } else { i }
            }
            None => i,
        };
        self.names |= name_bit(&to);
        let entry = &mut self.fields[i];
        entry.plain = !needs_escape(&to);
        entry.key = to;
        entry.span = None;
        true
    }

    /// Sets a field to any serializable value (appended when new, replaced in place when not).
    pub fn insert(
        &mut self,
        key: impl Into<Cow<'a, str>>,
        value: &impl Serialize,
    ) -> Result<(), String> {
        let key = key.into();
        let field = match Short::write(value) {
            Some(short) => Field::Short(short),
            // Longer (or failing: serialized again for its error).
            None => Field::Json(
                serde_json::to_string(value).map_err(|e| format!("field `{key}`: {e}"))?,
            ),
        };
        self.set(key, field);
        Ok(())
    }

    /// Sets a field to a string (kept as it is, escaped when the record is written out).
    pub fn insert_str(&mut self, key: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        self.set(key.into(), Field::Str(value.into()));
    }

    fn set(&mut self, key: Cow<'a, str>, field: Field<'a>) {
        match self.position(&key) {
            Some(i) => {
                self.fields[i].value = field;
                self.fields[i].span = None;
            }
            None => self.push(Entry::new(key, field)),
        }
    }

    /// The record as compact JSON text (untouched values exactly as they arrived).
    pub fn to_json(&self) -> String {
        let size: usize = self
            .fields
            .iter()
            .map(|e| e.key.len() + e.value.json_len() + 4)
            .sum();
        let mut out = String::with_capacity(size + 2);
        out.push('{');
        // Unchanged fields that follow each other in the text, with only a `,` between them,
        // are copied in one piece: the same bytes as writing them one by one.
        let mut run: Option<(usize, usize)> = None;
        let mut first = true;
        // Starts the next field (a `,` after the first), with `text` as its start.
        let mut next = |out: &mut String, text: &str| {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str(text);
        };
        for entry in &self.fields {
            if let Some((start, end)) = entry.span {
                run = match run {
                    Some((from, to)) if start == to + 1 && self.text.as_bytes()[to] == b',' => {
                        Some((from, end))
                    }
                    Some((from, to)) => {
                        next(&mut out, &self.text[from..to]);
                        Some((start, end))
                    }
                    None => Some((start, end)),
                };
                continue;
            }
            if let Some((from, to)) = run.take() {
                next(&mut out, &self.text[from..to]);
            }
            next(&mut out, "");
            if entry.plain {
                out.push('"');
                out.push_str(&entry.key);
                out.push('"');
            } else {
                push_json_str(&mut out, &entry.key);
            }
            out.push(':');
            entry.value.push_json(&mut out);
        }
        if let Some((from, to)) = run {
            next(&mut out, &self.text[from..to]);
        }
        out.push('}');
        out
    }

    /// The record as a [`Value`] (parses every field).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.to_json()).unwrap_or(Value::Null)
    }
}

impl Drop for Record<'_> {
    /// Keeps the emptied field list for the next record read ([`SPARE`]).
    fn drop(&mut self) {
        let mut fields = std::mem::take(&mut self.fields);
        if fields.capacity() == 0 || fields.capacity() > SPARE_FIELDS {
            return;
        }
        fields.clear();
        // An empty list holds no borrow, so it can be kept for any lifetime: `collect` into
        // entries of the same layout reuses the allocation in place.
        let spare: Vec<Entry<'static>> = fields.into_iter().map(|_| unreachable!()).collect();
        SPARE.set(spare);
    }
}

impl fmt::Display for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// One top-level field of a record as [`fields`] reads it, borrowed from the record's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    /// The name. It has no escapes: a record with an escaped name is not read by [`fields`].
    pub name: &'a str,
    /// The value's JSON text, exactly as it is in the record (checked, never parsed).
    pub value: &'a str,
    /// Where the field starts in the record's text: at its name's opening `"`.
    pub start: usize,
    /// Just past the value.
    pub end: usize,
}

impl<'a> RawField<'a> {
    /// Just past the name's closing `"`: a plugin that renames the field copies the text up to
    /// [`RawField::start`], writes the new name, and goes on from here.
    pub fn name_end(&self) -> usize {
        self.start + self.name.len() + 2
    }

    /// The value when it is a string with no escapes, without its quotes; `None` for any other
    /// value (a string with escapes is read with [`Record::str`]).
    #[inline]
    pub fn plain_str(&self) -> Option<&'a str> {
        let inner = self.value.strip_prefix('"')?.strip_suffix('"')?;
        (plain_run(inner.as_bytes(), 0) == inner.len()).then_some(inner)
    }
}

/// What [`fields`] saw of a record as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The index of the record's closing `}`.
    pub close: usize,
    /// Whether a name may have come twice. Two names share one of 64 bits, so this can be set
    /// for distinct names too; a plugin that needs a repeated name's last value (what [`Value`]
    /// and [`Record`] keep) reads such a record with [`Record::parse`] instead.
    pub may_repeat: bool,
}

/// Reads a compact record's top-level fields in one pass over its text, building nothing: each
/// field goes to `visit` in the order of the text. For a plugin that copies most of each record
/// through as it is (renaming, dropping or reading a few fields) and writes its output as it
/// reads, with no [`Record`] in between; the example `row-transform` does.
///
/// `None` for a text this pass does not read: anything but a JSON object, an object with
/// whitespace outside its values (the host sends records compact, as serde_json writes them),
/// an object with an escaped name, and invalid JSON. [`Record::parse`] reads the objects with
/// whitespace or escaped names, and gives the error for the others. A text this pass reads is accepted by serde_json too, with
/// the same fields, and [`Record::to_json`] writes it back unchanged when no name repeats.
///
/// ```
/// use trellis_sdk::record::fields;
///
/// let text = r#"{"first":"Ada","active":true}"#;
/// let mut renamed = String::new();
/// let mut copied = 0;
/// let shape = fields(text, |field| {
///     if field.name == "active" {
///         renamed.push_str(&text[copied..field.start]);
///         renamed.push_str(r#""is_active""#);
///         copied = field.name_end();
///     }
/// })
/// .unwrap();
/// renamed.push_str(&text[copied..]);
/// assert_eq!(renamed, r#"{"first":"Ada","is_active":true}"#);
/// assert!(!shape.may_repeat);
/// assert!(fields(r#"{"first": "Ada"}"#, |_| {}).is_none());
/// ```
#[inline]
pub fn fields<'a>(text: &'a str, mut visit: impl FnMut(RawField<'a>)) -> Option<Shape> {
    let (mut names, mut may_repeat) = (0u64, false);
    let close = walk::<true>(text, |name, start, _, value| {
        let bit = name_bit(name);
        may_repeat |= names & bit != 0;
        names |= bit;
        visit(RawField {
            name,
            value,
            start,
            end: start + name.len() + 3 + value.len(),
        });
    })?;
    Some(Shape { close, may_repeat })
}

/// A few names to look for among a record's fields ([`fields`]): a name that is none of them
/// is usually told apart by one bit test, with no bytes compared.
#[derive(Debug, Clone, Default)]
pub struct Names<'n> {
    names: Vec<&'n str>,
    bits: u64,
}

impl<'n> Names<'n> {
    /// The names, in the order [`Names::find`] numbers them.
    pub fn new(names: impl IntoIterator<Item = &'n str>) -> Names<'n> {
        let names: Vec<&str> = names.into_iter().collect();
        let bits = names.iter().fold(0, |bits, name| bits | name_bit(name));
        Names { names, bits }
    }

    /// The index of the first of the names equal to `name`.
    #[inline]
    pub fn find(&self, name: &str) -> Option<usize> {
        if self.bits & name_bit(name) == 0 {
            return None;
        }
        self.names.iter().position(|n| same(n, name))
    }
}

/// A name's bit in [`Record::names`], from its length and last byte.
#[inline]
fn name_bit(key: &str) -> u64 {
    let last = key.as_bytes().last().copied().unwrap_or(0);
    1 << ((key.len() ^ usize::from(last)) & 63)
}

/// Whether two names are equal. Names up to 16 bytes (most) are compared as two overlapping
/// words each, not by a call to `memcmp` (which a plugin's code makes byte by byte).
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // The first and the last `N` bytes of each: together they cover all `n` (N ≤ n ≤ 2N).
    fn ends<const N: usize>(x: &[u8]) -> ([u8; N], [u8; N]) {
        let first = x.first_chunk::<N>().copied().unwrap_or([0; N]);
        let last = x.last_chunk::<N>().copied().unwrap_or([0; N]);
        (first, last)
    }
    match n {
        0 => true,
        1..4 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..8 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

/// Whether `text` needs escapes as a JSON string: a control character, `"` or `\\`.
fn needs_escape(text: &str) -> bool {
    plain_run(text.as_bytes(), 0) < text.len()
}

/// The index of the first byte at or after `i` that a JSON string cannot hold as it is (a
/// control character, `"` or `\\`), or `b.len()`. Eight bytes at a time: a string is most of a
/// record's text.
#[inline]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let x = u64::from_le_bytes(chunk);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // Each term marks the high bit of a byte that is zero (`"`, `\\`) or below 0x20. A
        // borrow can mark bytes after the first such byte, never before it, so the lowest mark
        // is exact.
        let marks = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if marks != 0 {
            return i + (marks.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c < 0x20 || c == b'"' || c == b'\\' {
            break;
        }
        i += 1;
    }
    i
}

/// Appends `text` as a JSON string literal.
fn push_json_str(out: &mut String, text: &str) {
    if !needs_escape(text) {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // serde_json escapes exactly as it does everywhere else (it cannot fail on a `str`).
        let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        out.push_str(&escaped);
    }
}

/// The one-scan reading of a record into a [`Record`] ([`walk`]); `None` for anything the scan
/// does not accept, which [`Record::parse`] then hands to serde_json whole.
fn scan(text: &str) -> Option<Record<'_>> {
    let mut record = Record {
        fields: field_list(),
        text,
        names: 0,
    };
    walk::<false>(text, |key, at, start, raw| {
        let (value, end) = (Field::Raw(raw), start + raw.len());
        match record.position(key) {
            Some(p) => {
                record.fields[p].value = value;
                record.fields[p].span = None;
            }
            // The scan refused escapes and control characters in the name.
            None => record.push(Entry {
                key: Cow::Borrowed(key),
                plain: true,
                value,
                // Compact (`"name":value`) as `to_json` writes it, or not copied whole.
                span: (start == at + key.len() + 3).then_some((at, end)),
            }),
        }
    })?;
    Some(record)
}

/// One scan of a record's text: a JSON object whose names have no escapes. Strings, numbers,
/// `true`, `false` and `null` are checked here by the grammar serde_json checks them by; arrays
/// and objects are skipped by serde_json ([`nested_len`]). Each field is handed to `visit` as
/// its name, where its name's `"` is, and where its value starts and its text, in the order of
/// the text (a repeated name each time). The index of the closing `}`, or `None` for anything else
/// (escaped names and every kind of invalid text), which the caller then hands to serde_json
/// whole: so this scan only has to accept exactly what serde_json accepts, never to explain a
/// refusal. The tests compare the two on mutated records.
#[inline(always)]
fn walk<'a, const COMPACT: bool>(
    text: &'a str,
    mut visit: impl FnMut(&'a str, usize, usize, &'a str),
) -> Option<usize> {
    let b = text.as_bytes();
    // A compact record has no whitespace to skip: any there is then refused where it stands.
    let whitespace = |b: &[u8], i: usize| if COMPACT { i } else { whitespace(b, i) };
    let mut i = whitespace(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = whitespace(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (whitespace(b, i + 1) == b.len()).then_some(i);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let at = i;
        // A name has no escapes: it ends at the first byte a plain string cannot hold.
        let end = plain_run(b, i + 1);
        if b.get(end) != Some(&b'"') {
            return None;
        }
        let end = end + 1;
        // Between two `"`s.
        let key = piece(text, i + 1, end - 1);
        i = whitespace(b, end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = whitespace(b, i + 1);
        i = match *b.get(start)? {
            b'"' => string_end(b, start)?,
            b't' if b[start..].starts_with(b"true") => start + 4,
            b'f' if b[start..].starts_with(b"false") => start + 5,
            b'n' if b[start..].starts_with(b"null") => start + 4,
            b'-' | b'0'..=b'9' => number_end(b, start)?,
            b'[' | b'{' => start + nested_len(&text[start..])?,
            _ => return None,
        };
        // From an ASCII byte matched above to just past the value's last (ASCII) byte.
        visit(key, at, start, piece(text, start, i));
        i = whitespace(b, i);
        match b.get(i) {
            Some(b',') => i = whitespace(b, i + 1),
            Some(b'}') => return (whitespace(b, i + 1) == b.len()).then_some(i),
            _ => return None,
        }
    }
}

/// `text[from..to]`, for the scan's two ends at a character's edge: each is next to an ASCII
/// byte the scan matched (a `"`, the first byte of a value, the last of a value). Not checked
/// again: in a plugin each check is a dozen instructions, and the scan makes four per field.
#[inline(always)]
fn piece(text: &str, from: usize, to: usize) -> &str {
    debug_assert!(from <= to && text.is_char_boundary(from) && text.is_char_boundary(to));
    // SAFETY: the callers' `from` and `to` are within `text` (the scan read the bytes at or
    // before them), in order, and each at a character boundary, because the byte just before
    // or at each is ASCII, which is a whole character in UTF-8.
    unsafe { text.get_unchecked(from..to) }
}

/// The length of the array or object `text` starts with, checked and skipped by serde_json as
/// its parse of the whole record does (without a depth limit, in both).
fn nested_len(text: &str) -> Option<usize> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    Some(values.next()?.ok()?.get().len())
}

/// The index of the first byte at or after `i` that is not JSON whitespace. Inlined as one
/// test: the records a plugin gets are compact, so there is seldom whitespace to skip.
#[inline(always)]
fn whitespace(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(&c) if c > b' ' => i,
        _ => skip_whitespace(b, i),
    }
}

#[cold]
fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// The index just past the string that starts at `b[i]` (a `"`). Escapes are checked as
/// serde_json checks a string it skips (`\uXXXX` needs four hex digits, nothing more). Control
/// characters are refused, as JSON says. (A name, which may have no escapes, is scanned by
/// [`walk`] itself.)
#[inline(always)]
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i = plain_run(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// The index just past the number that starts at `b[i]`: `-? (0 | [1-9][0-9]*) (.[0-9]+)?
/// ([eE][+-]?[0-9]+)?`. A leading zero followed by a digit ends the number at the zero, and the
/// caller then refuses the digit.
#[inline(always)]
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The index of the first byte at or after `i` that is not an ASCII digit. Eight bytes at a
/// time, like [`plain_run`]: in a plugin a loop over bytes costs several times as much.
fn digits(b: &[u8], mut i: usize) -> usize {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const LOW_NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const THREES: u64 = 0x3030_3030_3030_3030;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    while let Some(chunk) = b.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let x = u64::from_le_bytes(*chunk);
        // A byte of `other` is non-zero exactly where `x`'s is not `0x30..=0x39`: its high
        // nibble is not 3, or its low nibble is over 9 (no carry crosses a byte: 0xF + 6 < 0x100).
        let other = ((x & HIGH_NIBBLES) ^ THREES) | (((x & LOW_NIBBLES) + SIXES) & HIGH_NIBBLES);
        if other != 0 {
            return i + (other.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let mut record = Record {
            fields: field_list(),
            text: "",
            names: 0,
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value: &'de RawValue = map.next_value()?;
            match record.position(&key) {
                Some(i) => record.fields[i].value = Field::Raw(value.get()),
                None => record.push(Entry::new(key, Field::Raw(value.get()))),
            }
        }
        Ok(record)
    }
}

/// A key, borrowed from the input unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value inserted is written as serde_json writes it, whether it is kept in the field
    /// (at most 22 bytes of JSON) or in a text of its own, and is read back as that text.
    #[test]
    fn inserted_values_are_serde_jsons_text_short_or_long() {
        let values = [
            serde_json::json!(0),
            serde_json::json!(-9_223_372_036_854_775_808_i64),
            serde_json::json!(18_446_744_073_709_551_615_u64),
            serde_json::json!(1760.4),
            serde_json::json!(-1.7976931348623157e308),
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!("a\"b"),
            serde_json::json!("exactly twenty chars"),
            serde_json::json!("exactly twenty-one ch"),
            serde_json::json!("twenty-three characters"),
            serde_json::json!("é🙂é🙂é🙂"),
            serde_json::json!([1, 2, 3]),
            serde_json::json!({"a": [1, {"b": "c"}], "d": "a longer string than fits"}),
        ];
        for value in &values {
            let text = serde_json::to_string(value).unwrap();
            let mut record = Record::parse(r#"{"x":1}"#).unwrap();
            record.insert("v", value).unwrap();
            record.insert("x", value).unwrap();
            assert_eq!(record.raw("v").as_deref(), Some(text.as_str()), "{text}");
            assert_eq!(record.to_json(), format!(r#"{{"x":{text},"v":{text}}}"#));
            assert_eq!(record.get("v").as_ref(), Some(value), "{text}");
            if let Some(s) = value.as_str() {
                assert_eq!(record.str("v").unwrap().as_deref(), Some(s));
            }
        }
        // A value serde_json refuses is refused with its error, however short.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let mut record = Record::parse("{}").unwrap();
        assert_eq!(
            record.insert("m", &bad),
            Err("field `m`: key must be a string".to_owned())
        );
        assert_eq!(record.to_json(), "{}");
    }

    #[test]
    fn untouched_values_are_copied_verbatim() {
        let text = r#"{"a": [1, 2], "b":{"c":"d"},"e":1.50}"#;
        let record = Record::parse(text).unwrap();
        assert_eq!(record.to_json(), r#"{"a":[1, 2],"b":{"c":"d"},"e":1.50}"#);
        assert_eq!(record.get("a"), Some(json!([1, 2])));
    }

    /// Digits are counted exactly, whatever byte follows them and wherever they stand.
    #[test]
    fn digits_end_at_the_first_other_byte() {
        for stop in 0..=255u8 {
            for len in 0..20 {
                let mut text = vec![b'x'];
                text.extend((0..len).map(|k| b'0' + (k % 10) as u8));
                text.push(stop);
                text.extend_from_slice(b"0123456789");
                let expected = 1 + len + usize::from(stop.is_ascii_digit()) * (1 + 10);
                assert_eq!(digits(&text, 1), expected, "{stop} {len}");
                assert_eq!(digits(&text[..1 + len], 1), 1 + len);
            }
        }
    }

    /// Names of every length compare equal exactly when their bytes are: a difference at any
    /// position is seen.
    #[test]
    fn names_compare_by_every_byte() {
        for n in 0..=20 {
            let a: String = (0..n).map(|i| char::from(b'a' + i as u8)).collect();
            assert!(same(&a, &a.clone()), "{a}");
            assert!(!same(&a, &format!("{a}x")), "{a}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'Z';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(&a, &b), "{a} {b}");
            }
        }
    }

    /// A record read after another was dropped fills the same field list, emptied. (This
    /// checks that `collect` still reuses the list in place, which `Drop` counts on for speed
    /// only: were it not to, each record would allocate its own list again.)
    #[test]
    fn a_dropped_records_field_list_is_reused() {
        let first = Record::parse(r#"{"a":1,"b":[2]}"#).unwrap();
        let list = first.fields.as_ptr() as usize;
        drop(first);
        let second = Record::parse(r#"{"c":3}"#).unwrap();
        assert_eq!(second.fields.as_ptr() as usize, list);
        assert_eq!(second.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(second.to_json(), r#"{"c":3}"#);
    }

    #[test]
    fn non_objects_and_trailing_text_are_refused() {
        assert!(Record::parse("[1]").is_err());
        assert!(Record::parse("1").is_err());
        assert!(Record::parse(r#"{"a":1} x"#).is_err());
        assert!(Record::parse(r#"{"a":}"#).is_err());
    }

    #[test]
    fn escaped_keys_and_strings() {
        let record = Record::parse(r#"{"a\"b":"x\ny","plain":"ok","n":null,"i":3}"#).unwrap();
        assert_eq!(
            record.keys().collect::<Vec<_>>(),
            ["a\"b", "plain", "n", "i"]
        );
        assert_eq!(record.str("a\"b").unwrap().unwrap(), "x\ny");
        assert!(matches!(
            record.str("plain").unwrap(),
            Some(Cow::Borrowed("ok"))
        ));
        assert_eq!(record.str("n").unwrap(), None);
        assert_eq!(record.str("missing").unwrap(), None);
        assert_eq!(
            record.str("i").unwrap_err(),
            "field `i`: invalid type: number, expected a string"
        );
        let secret = Record::parse(r#"{"ssn":123456789,"card":{"pan":"4111"}}"#).unwrap();
        for key in ["ssn", "card"] {
            let error = secret.str(key).unwrap_err();
            assert!(
                !error.contains("123456789") && !error.contains("4111"),
                "{error}"
            );
        }
        let back: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            back,
            json!({"a\"b": "x\ny", "plain": "ok", "n": null, "i": 3})
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_like_value_does() {
        let text = r#"{"a":1,"b":2,"a":3}"#;
        let record = Record::parse(text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(record.to_value(), value);
        assert_eq!(record.len(), 2);
    }

    /// The one-scan reading accepts a text only when serde_json does, with the same fields.
    /// Every text here is a record from the corpus with bytes changed, dropped or repeated.
    #[test]
    fn the_scan_accepts_only_what_serde_json_accepts() {
        let corpus = [
            r#"{"id":1,"first":"Ada","last":"Lovelace","salary":100000.5,"active":true,"x":null}"#,
            r#" { "a" : -0.5e+10 , "b":"tab\t\u00e9\ud800 \"q\" \/","c":false,"a":7 } "#,
            r#"{"n":[1,{"k":"v"}],"o":{}}"#,
            r#"{"e":1E-3,"z":0,"big":123456789012345678901234567890,"s":"é ünï 😀"}"#,
            r#"{}"#,
            r#"{"k\u0041":1}"#,
        ];
        let alphabet = b" \t\n{}[]\":,.-+eE0123456789abcdefnrtu\\/x\x01\x7f";
        let mut next = crate::testing::numbers(0x2545_f491_4f6c_dd1d);
        let (mut scanned, mut refused, mut fields_read) = (0, 0, 0);
        for round in 0..200_000 {
            let mut bytes = corpus[round % corpus.len()].as_bytes().to_vec();
            for _ in 0..=next() % 3 {
                let at = next() % (bytes.len() + 1);
                let byte = alphabet[next() % alphabet.len()];
                match next() % 4 {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 if at < bytes.len() => bytes.insert(at, bytes[at]),
                    _ => bytes.insert(at, byte),
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let by_serde = {
                let mut de = serde_json::Deserializer::from_str(text);
                Record::deserialize(&mut de).and_then(|r| de.end().map(|()| r))
            };
            // `fields` reads what the scan reads when it is compact (no whitespace outside the
            // values), the same fields in the order of the text.
            let mut compact_len = 2;
            let scanned_by_walk = walk::<false>(text, |name, _, _, value| {
                compact_len += usize::from(compact_len > 2) + name.len() + 3 + value.len();
            });
            let compact = scanned_by_walk.is_some() && compact_len == text.len();
            let mut visited = Vec::new();
            let shape = fields(text, |f| {
                assert_eq!(&text[f.start..f.name_end()], format!(r#""{}""#, f.name));
                assert_eq!(&text[f.name_end() + 1..f.end], f.value);
                visited.push(f);
            });
            assert_eq!(shape.is_some(), scan(text).is_some() && compact, "{text}");
            if let (Some(shape), Ok(slow)) = (shape, &by_serde) {
                fields_read += 1;
                assert_eq!(text.as_bytes()[shape.close], b'}');
                assert_eq!(shape.close, text.len() - 1);
                let names: Vec<&str> = visited.iter().map(|f| f.name).collect();
                let distinct = names
                    .iter()
                    .enumerate()
                    .all(|(i, n)| !names[..i].contains(n));
                assert!(distinct || shape.may_repeat, "{text}");
                if distinct {
                    assert_eq!(slow.keys().collect::<Vec<_>>(), names);
                    for f in &visited {
                        assert_eq!(slow.raw(f.name).as_deref(), Some(f.value));
                    }
                    assert_eq!(slow.to_json(), text);
                }
            }
            match (scan(text), by_serde) {
                (Some(mut fast), Ok(mut slow)) => {
                    scanned += 1;
                    assert_eq!(fast.to_json(), slow.to_json(), "{text}");
                    assert_eq!(
                        fast.keys().collect::<Vec<_>>(),
                        slow.keys().collect::<Vec<_>>()
                    );
                    // The same edits to both: the scanned record copies its unchanged fields
                    // from the text, serde_json's writes every field.
                    const KEYS: [&str; 7] = ["a", "b", "c", "id", "first", "x", "new"];
                    for _ in 0..next() % 4 {
                        let key = KEYS[next() % KEYS.len()];
                        let other = KEYS[next() % KEYS.len()];
                        let edit = next() % 4;
                        for record in [&mut fast, &mut slow] {
                            match edit {
                                0 => drop(record.rename(key, other)),
                                1 => record.insert_str(key, "v"),
                                2 => drop(record.remove(key)),
                                _ => record.insert(key, &7).unwrap(),
                            }
                        }
                        assert_eq!(fast.to_json(), slow.to_json(), "{text} after edits");
                    }
                }
                (Some(_), Err(e)) => panic!("the scan accepts {text:?}, serde_json does not: {e}"),
                (None, _) => refused += 1,
            }
        }
        // Both kinds were exercised.
        assert!(scanned > 10_000 && refused > 10_000, "{scanned} {refused}");
        assert!(fields_read > 10_000, "{fields_read}");
    }

    /// The eight-at-a-time search finds the first byte a string cannot hold, wherever it is,
    /// whatever follows it.
    #[test]
    fn plain_run_finds_the_first_special_byte() {
        let special = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        for len in 0..20 {
            for at in 0..len {
                for c in 0..=255u8 {
                    for after in [b'a', 0x00, 0xff, b'"'] {
                        let mut bytes = vec![b'a'; len];
                        bytes[at] = c;
                        bytes[at + 1..].fill(after);
                        let first = (0..len).find(|&i| special(bytes[i])).unwrap_or(len);
                        assert_eq!(plain_run(&bytes, 0), first, "{bytes:?}");
                        if at > 0 {
                            assert_eq!(plain_run(&bytes, 1), first.max(1), "{bytes:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn records_the_scan_leaves_to_serde_json_still_parse() {
        // Escaped names.
        for text in [r#"{"a\u0041":1}"#, r#"{"x":1,"b\n":[2]}"#] {
            assert!(scan(text).is_none(), "{text}");
            assert_eq!(
                Record::parse(text).unwrap().to_value(),
                serde_json::from_str::<Value>(text).unwrap()
            );
        }
        // serde_json skips a nested value without a depth limit, inside a record or alone.
        for levels in [1, 127, 128, 300] {
            let text = format!(r#"{{"n":{}{}}}"#, "[".repeat(levels), "]".repeat(levels));
            let by_serde = {
                let mut de = serde_json::Deserializer::from_str(&text);
                Record::deserialize(&mut de).and_then(|r| de.end().map(|()| r))
            };
            assert_eq!(scan(&text).unwrap().to_json(), by_serde.unwrap().to_json());
        }
        let text = r#"{"n":[1,{"k":"v"}],"o":{}}"#;
        assert_eq!(scan(text).unwrap().to_json(), text);
        let text = r#"{"first":"Ada","n":-1.5e3,"ok":false,"none":null}"#;
        assert_eq!(scan(text).unwrap().len(), 4);
        assert_eq!(Record::parse(text).unwrap().to_json(), text);
    }

    #[test]
    fn plain_strings_and_names_found() {
        let text = r#"{"a":"x","b":"y\"z","c":7,"d":null,"e":""}"#;
        let mut seen = Vec::new();
        fields(text, |f| seen.push((f.name, f.plain_str()))).unwrap();
        assert_eq!(
            seen,
            [
                ("a", Some("x")),
                ("b", None),
                ("c", None),
                ("d", None),
                ("e", Some(""))
            ]
        );
        let names = Names::new(["first", "last", "active", "salary", "first"]);
        assert_eq!(names.find("first"), Some(0));
        assert_eq!(names.find("salary"), Some(3));
        assert_eq!(names.find("active"), Some(2));
        for missing in ["", "firsT", "las", "lastt", "activ", "id"] {
            assert_eq!(names.find(missing), None, "{missing}");
        }
        assert_eq!(Names::default().find("a"), None);
    }

    #[test]
    fn edits_match_map_semantics() {
        let text = r#"{"a":1,"b":2,"c":3}"#;
        let mut record = Record::parse(text).unwrap();
        let mut map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();

        assert!(record.rename("a", "c"));
        let v = map.remove("a").unwrap();
        map.insert("c".into(), v);
        assert!(!record.rename("zz", "y"));
        assert!(record.rename("b", "b"));
        record.insert_str("s", "q\"uote\u{1}");
        map.insert("s".into(), json!("q\"uote\u{1}"));
        record.insert("b", &json!({"k": [true]})).unwrap();
        map.insert("b".into(), json!({"k": [true]}));
        assert_eq!(record.remove("s").as_deref(), Some(r#""q\"uote\u0001""#));
        map.remove("s");

        assert_eq!(record.to_value(), Value::Object(map));
        assert_eq!(record.keys().collect::<Vec<_>>(), ["c", "b"]);
    }
}
