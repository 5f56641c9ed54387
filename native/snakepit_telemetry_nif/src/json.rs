//! JSON for tool calls, done here with serde_json (the project has no Elixir JSON library):
//! tool parameters from terms to JSON text, and a tool's JSON result back to a term. Both
//! NIFs run on dirty CPU schedulers, in the calling process, so large maps are built where
//! that is safe and a long document never holds a normal scheduler.
//!
//! Terms to JSON: `nil` is null, `true`/`false` booleans, other atoms strings, integers that
//! fit 64 bits numbers, floats numbers, UTF-8 binaries strings, proper lists arrays, maps
//! with atom or string keys objects. Anything else (a pid, a tuple, a non-UTF-8 binary, a
//! bigger integer, nesting deeper than 128) has no JSON form. JSON to terms: objects are
//! maps with string keys (never atoms), numbers integers when they fit 64 bits, else floats.

use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term, TermType};
use serde_json::{Map, Number, Value};

use crate::atoms;

const MAX_DEPTH: usize = 128;

/// `json_encode_params(params)`: `{:ok, [{name, json}]}` for a map or keyword list of
/// parameters, or `{:error, {:invalid_param, name}}` for the first without a JSON form.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_params<'a>(env: Env<'a>, params: Term<'a>) -> Term<'a> {
    let pairs: Vec<(Term<'a>, Term<'a>)> = if params.get_type() == TermType::Map {
        match MapIterator::new(params) {
            Some(iterator) => iterator.collect(),
            None => return invalid_params(env, params),
        }
    } else {
        match params.decode::<Vec<(Term<'a>, Term<'a>)>>() {
            Ok(pairs) => pairs,
            Err(_) => return invalid_params(env, params),
        }
    };
    let mut encoded = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let Some(name) = key_string(key) else { return invalid_param(env, key) };
        let Some(json) = to_json(value, 0) else { return invalid_param(env, key) };
        let text = serde_json::to_vec(&json).unwrap_or_default();
        encoded.push((name, binary(env, &text)));
    }
    (atoms::ok(), encoded).encode(env)
}

/// `json_decode(binary)`: `{:ok, term}` or `{:error, :invalid_json}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    match serde_json::from_slice::<Value>(json.as_slice()) {
        Ok(value) => (atoms::ok(), to_term(env, &value)).encode(env),
        Err(_) => (atoms::error(), atoms::invalid_json()).encode(env),
    }
}

fn invalid_param<'a>(env: Env<'a>, key: Term<'a>) -> Term<'a> {
    (atoms::error(), (atoms::invalid_param(), key)).encode(env)
}

fn invalid_params<'a>(env: Env<'a>, params: Term<'a>) -> Term<'a> {
    (atoms::error(), (atoms::invalid_params(), params)).encode(env)
}

fn key_string(key: Term) -> Option<String> {
    match key.get_type() {
        TermType::Atom => key.atom_to_string().ok(),
        TermType::Binary => key.decode::<String>().ok(),
        _ => None,
    }
}

fn to_json(term: Term, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    match term.get_type() {
        TermType::Atom => {
            let atom = term.decode::<Atom>().ok()?;
            Some(if atom == atoms::nil() {
                Value::Null
            } else if atom == atoms::true_() {
                Value::Bool(true)
            } else if atom == atoms::false_() {
                Value::Bool(false)
            } else {
                Value::String(term.atom_to_string().ok()?)
            })
        }
        TermType::Integer => match term.decode::<i64>() {
            Ok(n) => Some(Value::Number(n.into())),
            Err(_) => term.decode::<u64>().ok().map(|n| Value::Number(n.into())),
        },
        TermType::Float => Number::from_f64(term.decode::<f64>().ok()?).map(Value::Number),
        TermType::Binary => term.decode::<String>().ok().map(Value::String),
        TermType::List => {
            let items: Vec<Term> = term.decode().ok()?;
            items
                .into_iter()
                .map(|item| to_json(item, depth + 1))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array)
        }
        TermType::Map => {
            let mut object = Map::new();
            for (key, value) in MapIterator::new(term)? {
                object.insert(key_string(key)?, to_json(value, depth + 1)?);
            }
            Some(Value::Object(object))
        }
        _ => None,
    }
}

fn to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.encode(env),
            (None, Some(u)) => u.encode(env),
            _ => n.as_f64().unwrap_or(0.0).encode(env),
        },
        Value::String(s) => binary(env, s.as_bytes()),
        Value::Array(items) => items.iter().map(|item| to_term(env, item)).collect::<Vec<_>>().encode(env),
        Value::Object(object) => {
            let keys: Vec<Term> = object.keys().map(|k| binary(env, k.as_bytes())).collect();
            let values: Vec<Term> = object.values().map(|v| to_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        }
    }
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}
