//! Validated Parquet reading and writing.

use arrow::array::{Array, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::SchemaError;
use crate::tables::TableSchema;

/// Check a batch against a table schema: every column present with an
/// accepted type, and no nulls in non-nullable columns. Columns are returned
/// in schema order (extra columns are dropped).
pub fn conform(schema: &TableSchema, artifact: &str, batch: &RecordBatch) -> Result<RecordBatch, SchemaError> {
    let mut columns = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        let Some(col) = batch.column_by_name(f.name) else {
            return Err(SchemaError::MissingColumn {
                artifact: artifact.to_string(),
                field: f.name.to_string(),
                expected: f.dtype.arrow().to_string(),
            });
        };
        if !f.dtype.accepts(col.data_type()) {
            return Err(SchemaError::WrongType {
                artifact: artifact.to_string(),
                field: f.name.to_string(),
                expected: f.dtype.arrow().to_string(),
                found: col.data_type().to_string(),
            });
        }
        if !f.nullable && col.null_count() > 0 {
            return Err(SchemaError::UnexpectedNull {
                artifact: artifact.to_string(),
                field: f.name.to_string(),
            });
        }
        // Normalise accepted variants (e.g. LargeUtf8, list item names) to the canonical type.
        let col = if col.data_type() == &f.dtype.arrow() {
            col.clone()
        } else {
            arrow::compute::cast(col, &f.dtype.arrow()).map_err(|e| SchemaError::WrongType {
                artifact: artifact.to_string(),
                field: f.name.to_string(),
                expected: f.dtype.arrow().to_string(),
                found: format!("{} ({e})", col.data_type()),
            })?
        };
        columns.push(col);
    }
    RecordBatch::try_new(schema.arrow(), columns).map_err(|e| SchemaError::Invalid {
        artifact: artifact.to_string(),
        reason: e.to_string(),
    })
}

/// Encode a batch as Parquet after validating it against `schema`.
///
/// The output is deterministic: the same batch gives the same bytes.
pub fn write_table(schema: &TableSchema, artifact: &str, batch: &RecordBatch) -> Result<Bytes, SchemaError> {
    let batch = conform(schema, artifact, batch)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_created_by(format!("worldcompass {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let fail = |e: parquet::errors::ParquetError| SchemaError::Invalid {
        artifact: artifact.to_string(),
        reason: format!("cannot encode Parquet: {e}"),
    };
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(fail)?;
    w.write(&batch).map_err(fail)?;
    w.close().map_err(fail)?;
    Ok(Bytes::from(buf))
}

/// Decode Parquet bytes and validate them against `schema`.
pub fn read_table(schema: &TableSchema, artifact: &str, bytes: Bytes) -> Result<RecordBatch, SchemaError> {
    let bad = |reason: String| SchemaError::BadParquet {
        artifact: artifact.to_string(),
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(e.to_string()))?;
    let file_schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| bad(e.to_string()))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    let batch = arrow::compute::concat_batches(&file_schema, &batches).map_err(|e| bad(e.to_string()))?;
    conform(schema, artifact, &batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Float64Array, Int64Array};

    use super::*;
    use crate::tables;

    fn metrics_batch(loss_as_int: bool) -> RecordBatch {
        let s = tables::optimize_metrics();
        let i = |v: i64| Arc::new(Int64Array::from(vec![v, v])) as Arc<dyn Array>;
        let f = |v: f64| Arc::new(Float64Array::from(vec![v, v])) as Arc<dyn Array>;
        let mut cols = vec![i(3), i(0), f(0.5), f(1.0), f(1e-4), f(0.4), i(12), Arc::new(BooleanArray::from(vec![true, false])) as _];
        let mut schema = s.arrow().as_ref().clone();
        if loss_as_int {
            cols[2] = i(1);
            let mut fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[2] = arrow::datatypes::Field::new("loss", arrow::datatypes::DataType::Int64, false);
            schema = arrow::datatypes::Schema::new(fields);
        }
        RecordBatch::try_new(Arc::new(schema), cols).unwrap()
    }

    #[test]
    fn roundtrip_is_lossless_and_deterministic() {
        let s = tables::optimize_metrics();
        let b = metrics_batch(false);
        let bytes = write_table(&s, "m.parquet", &b).unwrap();
        assert_eq!(bytes, write_table(&s, "m.parquet", &b).unwrap());
        let back = read_table(&s, "m.parquet", bytes).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn wrong_type_names_artifact_field_expected_and_found() {
        let err = write_table(&tables::optimize_metrics(), "iters/3/optimize/metrics.parquet", &metrics_batch(true)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("iters/3/optimize/metrics.parquet"), "{msg}");
        assert!(msg.contains("'loss'") && msg.contains("Int64") && msg.contains("Float64"), "{msg}");
    }

    #[test]
    fn missing_column_is_named() {
        let b = metrics_batch(false).project(&[0, 1, 3, 4, 5, 6, 7]).unwrap();
        let err = write_table(&tables::optimize_metrics(), "x.parquet", &b).unwrap_err();
        assert!(matches!(err, SchemaError::MissingColumn { ref field, .. } if field == "loss"), "{err}");
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let s = tables::optimize_metrics();
        let bytes = write_table(&s, "m.parquet", &metrics_batch(false)).unwrap();
        for cut in [0, 4, bytes.len() / 2, bytes.len() - 1] {
            let err = read_table(&s, "m.parquet", bytes.slice(0..cut)).unwrap_err();
            assert!(matches!(err, SchemaError::BadParquet { .. }), "cut {cut}: {err}");
        }
    }
}
