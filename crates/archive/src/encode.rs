//! The three formats of an export, written row by row from a table's column spec
//! ([`crate::columns`]) by one [`Encoder`].
//!
//! - **JSON lines**: one object per row, keys in column order; timestamps as RFC 3339 text with
//!   microseconds (`2026-12-01T08:00:00.123456Z`), JSON bodies as the JSON values they are
//!   (re-serialised on one line).
//! - **CSV** (RFC 4180): a header line of the column names, then one record per row; fields with
//!   a comma, quote, CR or LF quoted, quotes doubled; null is an empty field. What customers and
//!   agents wrote is untrusted: a text cell a spreadsheet would evaluate as a formula (starting
//!   with `=`, `+`, `-`, `@`, a tab or a CR) is prefixed with `'` ([`csv_cell`], OWASP's advice
//!   against CSV injection). Numbers, booleans and times are written as they are.
//! - **Parquet**: one typed column per column of the spec ([`parquet_schema`]): Text and Json
//!   as `BYTE_ARRAY` with the `STRING` logical type, Int as `INT64`, Bool as `BOOLEAN`, Timestamp
//!   as `INT64` `TIMESTAMP(MICROS, isAdjustedToUTC = true)` (and their legacy converted types,
//!   `UTF8` and `TIMESTAMP_MICROS`, for older readers). Written with the `parquet` crate's own
//!   column writers, without Arrow (which would triple the build cost, docs/ANALYTICS.md): rows
//!   are gathered column by column and written as a row group every [`ROW_GROUP_ROWS`] rows or
//!   [`ROW_GROUP_BYTES`] of text, so memory stays bounded whatever the number of rows. Snappy
//!   compression; dictionary encoding and statistics as the writer's defaults have them.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use time::OffsetDateTime;

use crate::Format;
use crate::columns::{Cell, ColType, Column};

/// The most rows in one Parquet row group.
pub const ROW_GROUP_ROWS: usize = 64 * 1_024;
/// Text values handed to Parquet's column writer at a time.
const WRITE_BATCH: usize = 1_024;
/// The most bytes of text gathered for one Parquet row group: about what the encoder holds in
/// memory.
pub const ROW_GROUP_BYTES: usize = 32 << 20;

/// Why a row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A column spec gave a value of another type than its own: a bug in [`crate::columns`].
    #[error("column {column}: {value} in a {ty:?} column")]
    Mistyped {
        column: &'static str,
        ty: ColType,
        value: String,
    },
}

/// Writes rows `R` to `W` in one format.
pub struct Encoder<R: 'static, W: Write + Send> {
    columns: &'static [Column<R>],
    kind: Kind<W>,
}

enum Kind<W: Write + Send> {
    Jsonl(W),
    Csv(W),
    Parquet(Box<ParquetEncoder<W>>),
}

impl<R: 'static, W: Write + Send> Encoder<R, W> {
    /// An encoder writing `format` to `out`; CSV's header line is written at once.
    ///
    /// # Errors
    /// The header cannot be written, or the Parquet writer refuses the schema.
    pub fn new(
        format: Format,
        columns: &'static [Column<R>],
        mut out: W,
    ) -> Result<Self, EncodeError> {
        let kind = match format {
            Format::Jsonl => Kind::Jsonl(out),
            Format::Csv => {
                let header: Vec<&str> = columns.iter().map(|c| c.name).collect();
                writeln!(out, "{}", header.join(","))?;
                Kind::Csv(out)
            }
            Format::Parquet => Kind::Parquet(Box::new(ParquetEncoder::new(columns, out)?)),
        };
        Ok(Encoder { columns, kind })
    }

    /// Writes one row.
    ///
    /// # Errors
    /// Writing or encoding failed.
    pub fn write(&mut self, row: &R) -> Result<(), EncodeError> {
        match &mut self.kind {
            Kind::Jsonl(out) => jsonl_row(out, self.columns, row),
            Kind::Csv(out) => csv_row(out, self.columns, row),
            Kind::Parquet(p) => p.write(self.columns, row),
        }
    }

    /// Writes what is pending (Parquet: the last row group and the footer) and gives the writer
    /// back, flushed.
    ///
    /// # Errors
    /// Writing or encoding failed.
    pub fn finish(self) -> Result<W, EncodeError> {
        let mut out = match self.kind {
            Kind::Jsonl(out) | Kind::Csv(out) => out,
            Kind::Parquet(p) => p.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}

/// `2026-12-01T08:00:00.123456Z`: RFC 3339 in UTC with microseconds, the store's precision;
/// fixed width, so that text order is time order.
pub fn timestamp_text(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

fn jsonl_row<R, W: Write>(out: &mut W, columns: &[Column<R>], row: &R) -> Result<(), EncodeError> {
    out.write_all(b"{")?;
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, c.name).map_err(io::Error::from)?;
        out.write_all(b":")?;
        match (c.get)(row) {
            Cell::Null => out.write_all(b"null")?,
            Cell::Text(s) => serde_json::to_writer(&mut *out, s).map_err(io::Error::from)?,
            Cell::Int(n) => write!(out, "{n}")?,
            Cell::Bool(b) => write!(out, "{b}")?,
            Cell::Timestamp(t) => {
                serde_json::to_writer(&mut *out, &timestamp_text(t)).map_err(io::Error::from)?
            }
            // Parsed and written again: a stored body may span lines, a JSON line may not. Text
            // that is not JSON (the store refuses it, so never) is kept as a string.
            Cell::Json(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(v) => serde_json::to_writer(&mut *out, &v),
                Err(_) => serde_json::to_writer(&mut *out, s),
            }
            .map_err(io::Error::from)?,
        }
    }
    out.write_all(b"}\n")?;
    Ok(())
}

fn csv_row<R, W: Write>(out: &mut W, columns: &[Column<R>], row: &R) -> Result<(), EncodeError> {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        match (c.get)(row) {
            Cell::Null => {}
            Cell::Text(s) | Cell::Json(s) => out.write_all(csv_field(&csv_cell(s)).as_bytes())?,
            Cell::Int(n) => write!(out, "{n}")?,
            Cell::Bool(b) => write!(out, "{b}")?,
            Cell::Timestamp(t) => out.write_all(timestamp_text(t).as_bytes())?,
        }
    }
    out.write_all(b"\n")?;
    Ok(())
}

/// A cell a spreadsheet would evaluate — starting with `=`, `+`, `-`, `@`, a tab or a carriage
/// return — prefixed with `'`, so it is shown as text instead (OWASP, "CSV Injection").
pub fn csv_cell(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// One CSV field (RFC 4180): quoted when it has a comma, quote, CR or LF, quotes doubled.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// The Parquet schema of a column spec: one primitive column per column, required unless
/// nullable.
///
/// # Errors
/// A name Parquet does not take (the specs' names are plain: never).
pub fn parquet_schema<R>(columns: &[Column<R>]) -> Result<Type, EncodeError> {
    let fields = columns
        .iter()
        .map(|c| {
            let (physical, logical) = match c.ty {
                ColType::Text | ColType::Json => {
                    (PhysicalType::BYTE_ARRAY, Some(LogicalType::String))
                }
                ColType::Int => (PhysicalType::INT64, None),
                ColType::Bool => (PhysicalType::BOOLEAN, None),
                ColType::Timestamp => (
                    PhysicalType::INT64,
                    Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
                ),
            };
            let repetition = if c.nullable {
                Repetition::OPTIONAL
            } else {
                Repetition::REQUIRED
            };
            Type::primitive_type_builder(c.name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Type::group_type_builder("schema")
        .with_fields(fields)
        .build()?)
}

/// Rows gathered column by column, written a row group at a time.
struct ParquetEncoder<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Gathered>,
    rows: usize,
    /// Bytes of text gathered.
    bytes: usize,
}

/// One column's values of the row group being gathered.
struct Gathered {
    values: Values,
    /// Definition levels of a nullable column: 1 for a value, 0 for a null (which has no value).
    defs: Option<Vec<i16>>,
}

enum Values {
    /// The texts one after the other in `data`, each ending at its `ends` offset: a few bytes
    /// per value besides the text itself (a `ByteArray` each would cost ten times the text of a
    /// short value).
    Text {
        data: Vec<u8>,
        ends: Vec<usize>,
    },
    /// Int and Timestamp (microseconds since the epoch).
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl Gathered {
    fn new<R>(column: &Column<R>) -> Self {
        Gathered {
            values: match column.ty {
                ColType::Text | ColType::Json => Values::Text {
                    data: Vec::new(),
                    ends: Vec::new(),
                },
                ColType::Int | ColType::Timestamp => Values::Int(Vec::new()),
                ColType::Bool => Values::Bool(Vec::new()),
            },
            defs: column.nullable.then(Vec::new),
        }
    }

    /// Adds `cell`; returns the bytes of text it added.
    fn push<R>(&mut self, column: &Column<R>, cell: Cell<'_>) -> Result<usize, EncodeError> {
        let mut bytes = 0;
        match (&mut self.values, column.ty, cell) {
            (Values::Text { data, ends }, ColType::Text, Cell::Text(s))
            | (Values::Text { data, ends }, ColType::Json, Cell::Json(s)) => {
                bytes = s.len();
                data.extend_from_slice(s.as_bytes());
                ends.push(data.len());
            }
            (Values::Int(v), ColType::Int, Cell::Int(n)) => v.push(n),
            (Values::Int(v), ColType::Timestamp, Cell::Timestamp(t)) => {
                v.push(store::unix_micros(t));
            }
            (Values::Bool(v), ColType::Bool, Cell::Bool(b)) => v.push(b),
            (_, _, Cell::Null) if column.nullable => {
                if let Some(defs) = &mut self.defs {
                    defs.push(0);
                }
                return Ok(0);
            }
            (_, _, cell) => {
                return Err(EncodeError::Mistyped {
                    column: column.name,
                    ty: column.ty,
                    value: format!("{cell:?}"),
                });
            }
        }
        if let Some(defs) = &mut self.defs {
            defs.push(1);
        }
        Ok(bytes)
    }
}

impl<W: Write + Send> ParquetEncoder<W> {
    fn new<R>(columns: &[Column<R>], out: W) -> Result<Self, EncodeError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("ccrelay {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer =
            SerializedFileWriter::new(out, Arc::new(parquet_schema(columns)?), Arc::new(props))?;
        Ok(ParquetEncoder {
            writer,
            columns: columns.iter().map(Gathered::new).collect(),
            rows: 0,
            bytes: 0,
        })
    }

    fn write<R>(&mut self, columns: &[Column<R>], row: &R) -> Result<(), EncodeError> {
        for (g, c) in self.columns.iter_mut().zip(columns) {
            self.bytes += g.push(c, (c.get)(row))?;
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS || self.bytes >= ROW_GROUP_BYTES {
            self.write_row_group()?;
        }
        Ok(())
    }

    /// Writes the rows gathered so far as one row group.
    fn write_row_group(&mut self) -> Result<(), EncodeError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for g in &mut self.columns {
            let Some(mut column) = group.next_column()? else {
                return Err(parquet::errors::ParquetError::General(
                    "fewer columns in the schema than gathered".to_owned(),
                )
                .into());
            };
            let defs = g.defs.as_deref();
            match &mut g.values {
                Values::Text { data, ends } => {
                    // Handed over as slices of one shared buffer, a batch of levels at a time.
                    let buffer = Bytes::from(std::mem::take(data));
                    let writer = column.typed::<ByteArrayType>();
                    let (mut start, mut next) = (0, 0);
                    let mut take = |n: usize| -> Vec<ByteArray> {
                        ends[next..next + n]
                            .iter()
                            .map(|&end| {
                                let v = ByteArray::from(buffer.slice(start..end));
                                start = end;
                                v
                            })
                            .inspect(|_| next += 1)
                            .collect()
                    };
                    match defs {
                        Some(defs) => {
                            for levels in defs.chunks(WRITE_BATCH) {
                                let values = take(levels.iter().filter(|&&l| l == 1).count());
                                writer.write_batch(&values, Some(levels), None)?;
                            }
                        }
                        None => {
                            for n in (0..ends.len()).step_by(WRITE_BATCH) {
                                let values = take(WRITE_BATCH.min(ends.len() - n));
                                writer.write_batch(&values, None, None)?;
                            }
                        }
                    }
                    ends.clear();
                }
                Values::Int(v) => {
                    column.typed::<Int64Type>().write_batch(v, defs, None)?;
                    v.clear();
                }
                Values::Bool(v) => {
                    column.typed::<BoolType>().write_batch(v, defs, None)?;
                    v.clear();
                }
            };
            column.close()?;
            if let Some(d) = &mut g.defs {
                d.clear();
            }
        }
        group.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<W, EncodeError> {
        self.write_row_group()?;
        Ok(self.writer.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::tests::{event, message, satisfaction};
    use crate::columns::{EVENT_COLUMNS, MESSAGE_COLUMNS, SATISFACTION_COLUMNS};

    fn encode<R>(format: Format, columns: &'static [Column<R>], rows: &[R]) -> Vec<u8> {
        let mut e = Encoder::new(format, columns, Vec::new()).unwrap();
        for r in rows {
            e.write(r).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn csv_cells_that_look_like_formulas_are_text() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1+2", "'+1+2"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=b", "a=b"),
            ("你好", "你好"),
        ] {
            assert_eq!(csv_cell(cell), want, "{cell:?}");
        }
        let csv = encode(Format::Csv, SATISFACTION_COLUMNS, &[satisfaction("5")]);
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.contains(",'=1+1,"), "{csv}");
    }

    #[test]
    fn csv_has_a_header_and_typed_cells() {
        let csv = encode(Format::Csv, MESSAGE_COLUMNS, &[message()]);
        let csv = String::from_utf8(csv).unwrap();
        let (header, record) = csv.split_once('\n').unwrap();
        assert!(header.starts_with("relay_id,kind,tenant,user_id,session_id,"));
        assert!(
            record.starts_with(
                "r1,cec,acme,ann,,down,,c1,AGENT,CHAT,TEXT,\"hi, \"\"you\"\"\nthere\","
            ),
            "{record}"
        );
        assert!(
            record.ends_with(
                ",received,,,2026-12-01T08:00:00.123456Z,\"{\"\"content\"\": \"\"hi\"\", \"\"n\"\": 1}\"\n"
            ),
            "{record}"
        );
        let csv = encode(Format::Csv, EVENT_COLUMNS, &[event()]);
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.contains(",error,false,ccrelay.error,"), "{csv}");
        let csv = encode(Format::Csv, SATISFACTION_COLUMNS, &[satisfaction("4")]);
        assert!(String::from_utf8(csv).unwrap().contains(",customer,4,"));
    }

    #[test]
    fn json_lines_keep_types_and_bodies() {
        let out = encode(Format::Jsonl, MESSAGE_COLUMNS, &[message(), message()]);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["relay_id"], "r1");
        assert_eq!(v["session_id"], serde_json::Value::Null);
        assert_eq!(v["content"], "hi, \"you\"\nthere");
        assert_eq!(v["created_at"], "2026-12-01T08:00:00.123456Z");
        assert_eq!(v["body"]["n"], 1, "the body as JSON");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), MESSAGE_COLUMNS.len());

        let line = encode(Format::Jsonl, EVENT_COLUMNS, &[event()]);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["ok"], false);
        let line = encode(Format::Jsonl, SATISFACTION_COLUMNS, &[satisfaction("3")]);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["score"], 3);
        let line = encode(Format::Jsonl, SATISFACTION_COLUMNS, &[satisfaction("x")]);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["score"], serde_json::Value::Null);
    }

    #[test]
    fn the_parquet_schema_has_the_columns_types() {
        use parquet::basic::ConvertedType;
        let schema = parquet_schema(MESSAGE_COLUMNS).unwrap();
        let field = |schema: &Type, name: &str| {
            schema
                .get_fields()
                .iter()
                .find(|f| f.name() == name)
                .cloned()
                .unwrap()
        };
        let created = field(&schema, "created_at");
        assert_eq!(created.get_physical_type(), PhysicalType::INT64);
        assert_eq!(
            created.get_basic_info().logical_type_ref(),
            Some(&LogicalType::timestamp(true, TimeUnit::MICROS))
        );
        assert_eq!(
            created.get_basic_info().converted_type(),
            ConvertedType::TIMESTAMP_MICROS
        );
        assert_eq!(created.get_basic_info().repetition(), Repetition::REQUIRED);
        let session = field(&schema, "session_id");
        assert_eq!(session.get_basic_info().repetition(), Repetition::OPTIONAL);
        assert_eq!(
            session.get_basic_info().converted_type(),
            ConvertedType::UTF8
        );
        let body = field(&schema, "body");
        assert_eq!(body.get_physical_type(), PhysicalType::BYTE_ARRAY);
        assert_eq!(
            body.get_basic_info().logical_type_ref(),
            Some(&LogicalType::String)
        );
        let schema = parquet_schema(EVENT_COLUMNS).unwrap();
        assert_eq!(
            field(&schema, "ok").get_physical_type(),
            PhysicalType::BOOLEAN
        );
        let schema = parquet_schema(SATISFACTION_COLUMNS).unwrap();
        let score = field(&schema, "score");
        assert_eq!(score.get_physical_type(), PhysicalType::INT64);
        assert_eq!(score.get_basic_info().logical_type_ref(), None);
    }

    #[test]
    fn parquet_files_read_back_with_their_rows_and_values() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let mut rows: Vec<_> = (0..2_500).map(|_| message()).collect();
        rows[1].session_id = Some("s1".into());
        let bytes = encode(Format::Parquet, MESSAGE_COLUMNS, &rows);
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2_500);
        let read: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .take(2)
            .map(|r| r.unwrap())
            .collect();
        let get = |row: &parquet::record::Row, name: &str| {
            row.get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(get(&read[0], "relay_id"), Field::Str("r1".into()));
        assert_eq!(get(&read[0], "session_id"), Field::Null);
        assert_eq!(get(&read[1], "session_id"), Field::Str("s1".into()));
        assert_eq!(
            get(&read[0], "created_at"),
            Field::TimestampMicros(store::unix_micros(rows[0].created_at))
        );
        assert_eq!(
            get(&read[0], "content"),
            Field::Str("hi, \"you\"\nthere".into())
        );
        let events = encode(Format::Parquet, EVENT_COLUMNS, &[event()]);
        let reader = SerializedFileReader::new(bytes::Bytes::from(events)).unwrap();
        let row = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
        assert_eq!(get(&row, "ok"), Field::Bool(false));
        assert_eq!(get(&row, "tenant"), Field::Null);
        let sat = encode(Format::Parquet, SATISFACTION_COLUMNS, &[satisfaction("4")]);
        let reader = SerializedFileReader::new(bytes::Bytes::from(sat)).unwrap();
        let row = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
        assert_eq!(get(&row, "score"), Field::Long(4));
        // An empty export is a valid file too.
        let empty = encode::<MessageRow>(Format::Parquet, MESSAGE_COLUMNS, &[]);
        let reader = SerializedFileReader::new(bytes::Bytes::from(empty)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }

    use store::MessageRow;
}
