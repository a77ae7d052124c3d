//! "Did you mean …?": the closest known name to a likely typo, for every loader's errors
//! (rules, config keys, URL parameters).

/// The closest of `candidates` to `input`, if close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(input, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
