//! A worker's telemetry settings (the desired state set from Elixir) and the [`Policy`] a
//! stream derives from them: per catalog event, whether it passes the toggle and the
//! allow/deny filter, and at what rate the NIF itself samples it.
//!
//! Semantics, shared with the Python worker (`snakepit_bridge.telemetry.policy`):
//! - `enabled: false` removes every event;
//! - a pattern-less sampling rate applies to every event; pattern-scoped rules override it
//!   for matching events, the most recently set rule first;
//! - deny wins over allow; an empty allow list allows everything.
//!
//! Patterns are globs over the dotted worker name (`tool.execution.stop`): `*` matches any
//! run of characters (dots included), `?` exactly one.
//!
//! Sampling happens once: a worker that says it honours sampling patterns gets every rule
//! and samples at the source, so the NIF does not sample again. Any other worker (Snakepit's
//! own apply one rate to every event) gets the highest rate any event needs, and the NIF
//! samples each event down to its own rate, so such a worker never drops an event the
//! operator did not ask to sample. Toggle and filters are deterministic and enforced on both
//! sides.

use crate::catalog::Catalog;

/// Longest pattern accepted (as in Elixir's `Snakepit.Telemetry.Control`).
pub const MAX_PATTERN_BYTES: usize = 256;

/// Capability a worker announces in its response headers when it applies sampling patterns.
pub const SAMPLING_PATTERNS: &str = "sampling-patterns";

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingRule {
    pub patterns: Vec<String>,
    pub rate: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    /// Rate of events no rule matches.
    pub sampling_rate: f64,
    /// Pattern-scoped rates, oldest first (the last matching rule wins).
    pub sampling_rules: Vec<SamplingRule>,
    pub allow: Vec<String>,
    /// The worker's own deny list; the config's `excluded_events` are added by
    /// [`Settings::effective`].
    pub deny: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            enabled: true,
            sampling_rate: 1.0,
            sampling_rules: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SettingsError {
    InvalidRate,
    InvalidPattern(String),
}

/// A valid pattern: non-empty, at most [`MAX_PATTERN_BYTES`], only `[A-Za-z0-9_.*?-]`.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN_BYTES
        && pattern.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'*' | b'?' | b'-'))
}

/// Glob match of `name` against `pattern` (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // A `*` in the pattern is always a wildcard, also where the name has a `*`.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((star_pi, star_ni)) = star {
            pi = star_pi + 1;
            ni = star_ni + 1;
            star = Some((star_pi, star_ni + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn any_match(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

impl Settings {
    /// The settings as enforced: the config's `excluded` patterns denied on top of the
    /// worker's own deny list.
    pub fn effective(&self, excluded: &[String]) -> Settings {
        let mut effective = self.clone();
        if !excluded.is_empty() {
            let own = std::mem::take(&mut effective.deny);
            effective.deny =
                excluded.iter().cloned().chain(own.into_iter().filter(|p| !excluded.contains(p))).collect();
        }
        effective
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let rates = std::iter::once(self.sampling_rate).chain(self.sampling_rules.iter().map(|r| r.rate));
        for rate in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SettingsError::InvalidRate);
            }
        }
        let patterns =
            self.sampling_rules.iter().flat_map(|r| &r.patterns).chain(&self.allow).chain(&self.deny);
        for pattern in patterns {
            if !valid_pattern(pattern) {
                return Err(SettingsError::InvalidPattern(pattern.clone()));
            }
        }
        Ok(())
    }

    /// The rate the operator asked for this event.
    pub fn rate_for(&self, name: &str) -> f64 {
        self.sampling_rules
            .iter()
            .rev()
            .find(|rule| any_match(&rule.patterns, name))
            .map_or(self.sampling_rate, |rule| rule.rate)
    }

    /// Whether the toggle and the allow/deny filter let this event through.
    pub fn admits(&self, name: &str) -> Option<Removal> {
        if !self.enabled {
            Some(Removal::Disabled)
        } else if any_match(&self.deny, name) || (!self.allow.is_empty() && !any_match(&self.allow, name)) {
            Some(Removal::FilteredOut)
        } else {
            None
        }
    }

    /// The one pattern-less rate sent to a worker that does not apply patterns: the highest
    /// rate any event needs (the NIF samples the rest down).
    pub fn rate_for_plain_worker(&self) -> f64 {
        self.sampling_rules.iter().map(|r| r.rate).fold(self.sampling_rate, f64::max)
    }
}

/// Why the settings remove an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Disabled,
    FilteredOut,
}

/// What happens to one catalog event under given settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Remove(Removal),
    /// Keep with this probability (1.0: always).
    Keep(f64),
}

/// The settings evaluated once per catalog event, so no pattern runs per event.
#[derive(Clone, Debug)]
pub struct Policy {
    decisions: Vec<Decision>,
}

impl Policy {
    /// `worker_samples_patterns`: the worker announced [`SAMPLING_PATTERNS`], so it samples
    /// every event itself and the NIF keeps all that pass the filters.
    pub fn new(settings: &Settings, catalog: &Catalog, worker_samples_patterns: bool) -> Policy {
        let worker_rate = settings.rate_for_plain_worker();
        let decisions = catalog
            .events()
            .iter()
            .map(|event| match settings.admits(&event.worker_name) {
                Some(removal) => Decision::Remove(removal),
                None if worker_samples_patterns => Decision::Keep(1.0),
                None if worker_rate <= 0.0 => Decision::Keep(0.0),
                None => Decision::Keep((settings.rate_for(&event.worker_name) / worker_rate).min(1.0)),
            })
            .collect();
        Policy { decisions }
    }

    pub fn decision(&self, event: crate::catalog::EventIndex) -> Decision {
        self.decisions.get(event as usize).copied().unwrap_or(Decision::Keep(1.0))
    }
}

/// Whether a worker's capabilities header announces pattern sampling.
pub fn samples_patterns(capabilities: &str) -> bool {
    crate::client::has_capability(capabilities, SAMPLING_PATTERNS)
}

/// A small, fast random source for sampling and backoff jitter (SplitMix64); one per stream task.
pub struct Sampler {
    state: u64,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `rate`.
    pub fn keep(&mut self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        self.next_unit() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("python.call.*", "python.call.start"));
        assert!(glob_match("tool.*", "tool.execution.stop"), "* matches dots");
        assert!(glob_match("*", "anything.at.all"));
        assert!(glob_match("tool.execution.st?p", "tool.execution.stop"));
        assert!(glob_match("*.stop", "tool.execution.stop"));
        assert!(glob_match("t*l.*.stop", "tool.execution.stop"));
        assert!(!glob_match("python.call.*", "python.calls"));
        assert!(!glob_match("tool.?", "tool.ab"));
        assert!(!glob_match("tool", "tool.execution.stop"));
        assert!(glob_match("tool.execution.stop", "tool.execution.stop"));
    }

    /// The shared table of `pattern | name | match, nomatch or invalid` rows that the Python
    /// and Elixir tests read too.
    #[test]
    fn the_shared_pattern_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/fixtures/pattern_cases.txt");
        let table = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut rows = 0;
        for (number, line) in table.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(" | ").collect();
            assert_eq!(fields.len(), 3, "line {}: {line:?}", number + 1);
            let (pattern, name, expected) = (fields[0], fields[1], fields[2].trim_end());
            match expected {
                "invalid" => assert!(!valid_pattern(pattern), "line {}: {pattern:?} is valid", number + 1),
                "match" | "nomatch" => {
                    assert!(valid_pattern(pattern), "line {}: {pattern:?} is invalid", number + 1);
                    let matched = glob_match(pattern, name);
                    assert_eq!(matched, expected == "match", "line {}: {pattern:?} vs {name:?}", number + 1);
                }
                other => panic!("line {}: unknown result {other:?}", number + 1),
            }
            rows += 1;
        }
        assert!(rows >= 40, "the table has {rows} rows");
    }

    #[test]
    fn excluded_events_are_denied_on_top_of_the_workers_own_list() {
        let mut s = settings();
        s.deny = vec!["tool.*".into(), "python.gc.*".into()];
        let effective = s.effective(&["python.gc.*".into(), "python.cpu.*".into()]);
        assert_eq!(effective.deny, ["python.gc.*", "python.cpu.*", "tool.*"]);
        assert_eq!(s.effective(&[]), s);
    }

    #[test]
    fn pattern_validity() {
        assert!(valid_pattern("python.call.*"));
        assert!(valid_pattern("a-b_c?"));
        for bad in ["", "a b", "tool.[ab]", "é", &"a".repeat(257)] {
            assert!(!valid_pattern(bad), "{bad:?}");
        }
    }

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn deny_wins_and_empty_allow_allows_all() {
        let mut s = settings();
        assert_eq!(s.admits("tool.execution.stop"), None);
        s.allow = vec!["python.call.*".into()];
        assert_eq!(s.admits("tool.execution.stop"), Some(Removal::FilteredOut));
        assert_eq!(s.admits("python.call.start"), None);
        s.deny = vec!["python.call.start".into()];
        assert_eq!(s.admits("python.call.start"), Some(Removal::FilteredOut));
        s.enabled = false;
        assert_eq!(s.admits("python.call.stop"), Some(Removal::Disabled));
    }

    #[test]
    fn the_latest_matching_rule_wins() {
        let mut s = settings();
        s.sampling_rate = 0.5;
        s.sampling_rules = vec![
            SamplingRule { patterns: vec!["tool.*".into()], rate: 0.1 },
            SamplingRule { patterns: vec!["tool.execution.*".into()], rate: 0.2 },
        ];
        assert_eq!(s.rate_for("tool.execution.stop"), 0.2);
        assert_eq!(s.rate_for("tool.result_size"), 0.1);
        assert_eq!(s.rate_for("python.call.start"), 0.5);
        assert_eq!(s.rate_for_plain_worker(), 0.5);
    }

    #[test]
    fn validation() {
        let mut s = settings();
        assert_eq!(s.validate(), Ok(()));
        s.sampling_rate = 1.5;
        assert_eq!(s.validate(), Err(SettingsError::InvalidRate));
        s.sampling_rate = f64::NAN;
        assert_eq!(s.validate(), Err(SettingsError::InvalidRate));
        s.sampling_rate = 1.0;
        s.deny = vec!["bad pattern".into()];
        assert_eq!(s.validate(), Err(SettingsError::InvalidPattern("bad pattern".into())));
    }

    #[test]
    fn policy_per_event_and_worker_kind() {
        let catalog = crate::catalog::test_catalog();
        let index = |name| catalog.event_index(name).expect("catalog event");
        let mut s = settings();
        s.sampling_rate = 0.5;
        s.sampling_rules = vec![SamplingRule { patterns: vec!["python.call.*".into()], rate: 0.1 }];
        s.deny = vec!["python.gc.*".into()];

        let plain = Policy::new(&s, &catalog, false);
        // The plain worker samples everything at 0.5; the NIF takes python.call.* to 0.1.
        assert_eq!(plain.decision(index("python.call.start")), Decision::Keep(0.1 / 0.5));
        assert_eq!(plain.decision(index("tool.execution.stop")), Decision::Keep(1.0));
        assert_eq!(plain.decision(index("python.gc.completed")), Decision::Remove(Removal::FilteredOut));

        let capable = Policy::new(&s, &catalog, true);
        assert_eq!(capable.decision(index("python.call.start")), Decision::Keep(1.0));
        assert_eq!(capable.decision(index("python.gc.completed")), Decision::Remove(Removal::FilteredOut));

        // A rule above the default: the plain worker is sent the higher rate.
        s.sampling_rules = vec![SamplingRule { patterns: vec!["tool.*".into()], rate: 1.0 }];
        s.sampling_rate = 0.25;
        let plain = Policy::new(&s, &catalog, false);
        assert_eq!(s.rate_for_plain_worker(), 1.0);
        assert_eq!(plain.decision(index("tool.execution.stop")), Decision::Keep(1.0));
        assert_eq!(plain.decision(index("python.call.stop")), Decision::Keep(0.25));
    }

    #[test]
    fn capabilities_header() {
        assert!(samples_patterns("sampling-patterns"));
        assert!(samples_patterns("foo, sampling-patterns"));
        assert!(!samples_patterns(""));
        assert!(!samples_patterns("sampling"));
    }

    #[test]
    fn sampler_keeps_about_the_rate() {
        let mut sampler = Sampler::new(42);
        let kept = (0..100_000).filter(|_| sampler.keep(0.1)).count();
        // Binomial(100000, 0.1): sd ~ 95; 5 sigma.
        assert!((9_525..=10_475).contains(&kept), "{kept}");
        assert!((0..100).all(|_| sampler.keep(1.0)));
        assert!((0..100).all(|_| !sampler.keep(0.0)));
    }
}
