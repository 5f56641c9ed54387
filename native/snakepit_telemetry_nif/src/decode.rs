//! Terms in: the options of `start`, a worker's settings and its registration metadata.
//! Every failure is an [`ApiError`] naming what was wrong; nothing here panics on input.

use ahash::AHashMap;
use rustler::{Atom, Decoder, Env, Term};
use snakepit_telemetry_core::catalog::{CatalogSpec, WorkerEventSpec};
use snakepit_telemetry_core::settings::{SamplingRule, Settings, SettingsError};

use crate::atoms;
use crate::encode::StaticValue;
use crate::terms::ApiError;

/// The value of `key` in the options map, or `default` when absent.
pub fn option<'a, T: Decoder<'a>>(options: Term<'a>, key: Atom, default: T) -> Result<T, ApiError> {
    match options.map_get(key) {
        Ok(value) => value.decode().map_err(|_| ApiError::InvalidOption(key)),
        Err(_) => Ok(default),
    }
}

/// A required option that must be a positive integer.
pub fn positive(options: Term, key: Atom) -> Result<usize, ApiError> {
    let value: usize = required(options, key)?;
    if value == 0 {
        return Err(ApiError::InvalidOption(key));
    }
    Ok(value)
}

/// A required option, decoded as `T` (an unsigned integer type refuses negative values).
pub fn required<'a, T: Decoder<'a>>(options: Term<'a>, key: Atom) -> Result<T, ApiError> {
    options.map_get(key).and_then(|v| v.decode()).map_err(|_| ApiError::InvalidOption(key))
}

/// The catalog Elixir read from the catalog file (plus the app events of the config):
/// `%{measurement_keys: [{atom, native_time?}], metadata_keys: [atom],
/// events: [{worker_name, [atom], [atom]}]}`. Returns it with the atom of every name.
pub fn catalog(env: Env, term: Term) -> Result<(CatalogSpec, AHashMap<String, Atom>), ApiError> {
    let invalid = |what: &str| ApiError::InvalidCatalog(what.to_string());
    let field = |key: Atom, what: &str| term.map_get(key).map_err(|_| invalid(what));
    let mut atom_of: AHashMap<String, Atom> = AHashMap::new();
    let mut name = |atom: Atom| -> Result<String, ApiError> {
        let text = atom.to_term(env).atom_to_string().map_err(|_| invalid("an atom"))?;
        atom_of.insert(text.clone(), atom);
        Ok(text)
    };

    let measurement_keys: Vec<(Atom, bool)> = field(atoms::measurement_keys(), "measurement_keys")?
        .decode()
        .map_err(|_| invalid("measurement_keys"))?;
    let metadata_keys: Vec<Atom> =
        field(atoms::metadata_keys(), "metadata_keys")?.decode().map_err(|_| invalid("metadata_keys"))?;
    let events: Vec<(String, Vec<Atom>, Vec<Atom>)> =
        field(atoms::events(), "events")?.decode().map_err(|_| invalid("events"))?;

    let mut spec = CatalogSpec::default();
    for (key, native_time) in measurement_keys {
        spec.measurement_keys.push((name(key)?, native_time));
    }
    for key in metadata_keys {
        spec.metadata_keys.push(name(key)?);
    }
    for (worker_name, event, measurements) in events {
        let event = event.into_iter().map(&mut name).collect::<Result<_, _>>()?;
        let measurements = measurements.into_iter().map(&mut name).collect::<Result<_, _>>()?;
        spec.events.push(WorkerEventSpec { worker_name, event, measurements });
    }
    Ok((spec, atom_of))
}

/// `%{enabled:, sampling_rate:, sampling_rules: [{[pattern], rate}], allow:, deny:}`.
pub fn settings(term: Term) -> Result<Settings, ApiError> {
    let field = |key: Atom| term.map_get(key).map_err(|_| ApiError::InvalidSettings);
    let decoded = |key: Atom| field(key);
    let enabled: bool = decoded(atoms::enabled())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let sampling_rate: f64 =
        decoded(atoms::sampling_rate())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let rules: Vec<(Vec<String>, f64)> =
        decoded(atoms::sampling_rules())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let allow: Vec<String> = decoded(atoms::allow())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let deny: Vec<String> = decoded(atoms::deny())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let settings = Settings {
        enabled,
        sampling_rate,
        sampling_rules: rules.into_iter().map(|(patterns, rate)| SamplingRule { patterns, rate }).collect(),
        allow,
        deny,
    };
    settings.validate().map_err(|e| match e {
        SettingsError::InvalidRate => {
            let bad = std::iter::once(settings.sampling_rate)
                .chain(settings.sampling_rules.iter().map(|r| r.rate))
                .find(|r| !(0.0..=1.0).contains(r))
                .unwrap_or(f64::NAN);
            ApiError::InvalidRate(bad)
        }
        SettingsError::InvalidPattern(p) => ApiError::InvalidPattern(p),
    })?;
    Ok(settings)
}

/// Registration metadata decoded: the pairs, and the name of each key.
pub type Metadata = (Vec<(Atom, StaticValue)>, Vec<String>);

/// Registration metadata: `[{catalog_key_atom, atom | integer | float | binary}]`.
pub fn metadata(env: Env, pairs: Vec<(Atom, Term)>) -> Result<Metadata, ApiError> {
    let mut decoded = Vec::with_capacity(pairs.len());
    let mut names = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let value = if let Ok(atom) = value.decode::<Atom>() {
            StaticValue::Atom(atom)
        } else if let Ok(int) = value.decode::<i64>() {
            StaticValue::Int(int)
        } else if let Ok(float) = value.decode::<f64>() {
            StaticValue::Float(float)
        } else if let Ok(text) = value.decode::<String>() {
            StaticValue::Str(text)
        } else {
            return Err(ApiError::InvalidMetadata(key));
        };
        names.push(key.to_term(env).atom_to_string().map_err(|_| ApiError::InvalidMetadata(key))?);
        decoded.push((key, value));
    }
    Ok((decoded, names))
}
