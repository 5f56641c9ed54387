//! One event to the bytes of its `TelemetryEvent`, with the same outcome as
//! `encoding.encode_event(...).SerializeToString()`: the same message (map entries in the
//! dicts' order), and an exception wherever protobuf raises one (the caller drops the event
//! as `encode_error`). Used for buffered records (`encode_record`, the sender of the
//! protobuf-fallback producer) and by the native producer's `emit`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::PyTypeInfo;

use crate::protobuf::{self, Value};

/// Serialize `record` = `(name, measurements, metadata, correlation_id, timestamp_ns,
/// charge)`; `measurement_value` comes first so that Python can bind it with
/// `functools.partial`. Measurement values that are not exactly `int`, `float` or `str` go through
/// `measurement_value` (the Python package's conversion: bool and other integrals to int,
/// other reals to float; it raises for anything else).
///
/// Keys and the correlation id may also be UTF-8 `bytes`, as protobuf allows. Raises
/// `TypeError` for a name that is not a str, or a key or correlation id of another type, `OverflowError` for an
/// int outside int64, `UnicodeEncodeError` for a string with a lone surrogate, and
/// whatever `measurement_value` raises.
#[pyfunction]
pub fn encode_record<'py>(
    py: Python<'py>,
    measurement_value: &Bound<'py, PyAny>,
    record: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyBytes>> {
    let name = record.get_item(0)?;
    let measurements = record.get_item(1)?;
    let metadata = record.get_item(2)?;
    let correlation_id = record.get_item(3)?;
    let timestamp_ns: i64 = record.get_item(4)?.extract()?;
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    let event = Event { name: &name, measurements: &measurements, metadata: &metadata };
    encode_event(&mut buf, measurement_value, &event, &correlation_id, timestamp_ns)?;
    Ok(PyBytes::new(py, &buf))
}

/// What one `emit` call names: the dotted name and the two mappings (metadata may be None).
pub struct Event<'a, 'py> {
    pub name: &'a Bound<'py, PyAny>,
    pub measurements: &'a Bound<'py, PyAny>,
    pub metadata: &'a Bound<'py, PyAny>,
}

/// Append `event`'s `TelemetryEvent` to `buf`.
///
/// The mappings are read in one pass each before any Python code can run (the pairs are
/// taken with new references, then converted), so a `__str__` that changes a dict cannot
/// make the iteration fail. Mappings that are not dicts are copied with `dict()` first.
pub fn encode_event<'py>(
    buf: &mut Vec<u8>,
    measurement_value: &Bound<'py, PyAny>,
    event: &Event<'_, 'py>,
    correlation_id: &Bound<'py, PyAny>,
    timestamp_ns: i64,
) -> PyResult<()> {
    for part in as_str(event.name, "event name")?.split('.') {
        protobuf::bytes_field(buf, protobuf::EVENT_PART, part.as_bytes());
    }
    for (key, value) in pairs(event.measurements)? {
        let key = as_text(&key, "measurement key")?;
        if let Some(plain) = exact_value(&value)? {
            protobuf::measurement_entry(buf, key, &plain);
        } else {
            let converted = measurement_value.call1((value,))?;
            let plain = exact_value(&converted)?.ok_or_else(|| {
                PyTypeError::new_err("measurement_value returned a value of an unsupported type")
            })?;
            protobuf::measurement_entry(buf, key, &plain);
        }
    }
    if !event.metadata.is_none() {
        for (key, value) in pairs(event.metadata)? {
            let key = as_text(&key, "metadata key")?;
            if let Ok(text) = value.cast::<PyString>() {
                protobuf::metadata_entry(buf, key, text.to_str()?);
            } else {
                let text = value.str()?;
                protobuf::metadata_entry(buf, key, text.to_str()?);
            }
        }
    }
    if timestamp_ns != 0 {
        buf.push(protobuf::EVENT_TIMESTAMP);
        protobuf::varint(buf, timestamp_ns as u64);
    }
    // As `if correlation_id: message.correlation_id = correlation_id`.
    if correlation_id.is_truthy()? {
        let text = as_text(correlation_id, "correlation id")?;
        protobuf::bytes_field(buf, protobuf::EVENT_CORRELATION_ID, text.as_bytes());
    }
    Ok(())
}

type Pairs<'py> = Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>;

/// The (key, value) pairs of a mapping, in its order. A dict is read in one pass in which
/// no Python code runs; anything else goes through `dict(mapping)`.
fn pairs<'py>(mapping: &Bound<'py, PyAny>) -> PyResult<Pairs<'py>> {
    let converted;
    let dict = match mapping.cast::<PyDict>() {
        Ok(dict) => dict,
        Err(_) => {
            converted = PyDict::type_object(mapping.py()).call1((mapping,))?.cast_into::<PyDict>()?;
            &converted
        }
    };
    let mut out = Vec::with_capacity(dict.len());
    out.extend(dict.iter());
    Ok(out)
}

/// The str's UTF-8 (str subclasses included, as protobuf accepts them).
pub fn as_str<'a>(object: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a str> {
    match object.cast::<PyString>() {
        Ok(text) => text.to_str(),
        Err(_) => Err(PyTypeError::new_err(format!("{what} must be str, got {}", object.get_type().name()?))),
    }
}

/// A string field's UTF-8, as protobuf takes it when assigned: a str, or bytes that are
/// valid UTF-8 (used as they are).
fn as_text<'a>(object: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a str> {
    if let Ok(bytes) = object.cast::<PyBytes>() {
        return std::str::from_utf8(bytes.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("{what} bytes are not valid UTF-8")));
    }
    as_str(object, what)
}

/// The wire value of an exact `int`, `float` or `str`; None for any other type.
fn exact_value<'a>(object: &'a Bound<'_, PyAny>) -> PyResult<Option<Value<'a>>> {
    if object.is_exact_instance_of::<PyInt>() {
        Ok(Some(Value::Int(object.extract::<i64>()?)))
    } else if object.is_exact_instance_of::<PyFloat>() {
        Ok(Some(Value::Float(object.extract::<f64>()?)))
    } else if object.is_exact_instance_of::<PyString>() {
        Ok(Some(Value::Str(object.cast::<PyString>()?.to_str()?)))
    } else {
        Ok(None)
    }
}
