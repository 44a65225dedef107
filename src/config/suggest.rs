//! "Did you mean ...?" for misspelled keys and deployment names.

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo
/// (at most a third of the word's length, and at least one edit allowed); failing that, the one
/// candidate that `word` is a clipped form of (`primary` for `primary_key`).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let by_distance = candidates
        .iter()
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    by_distance.or_else(|| {
        if word.chars().count() < 4 {
            return None;
        }
        let mut clipped = candidates
            .iter()
            .filter(|candidate| candidate.to_lowercase().starts_with(&word));
        // Only an unambiguous prefix is a suggestion.
        match (clipped.next(), clipped.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// Levenshtein distance, counting an adjacent swap (`trafifc`) as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rolling rows are enough for the transposition rule.
    let mut before_previous = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before_previous[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT_KEYS: [&str; 4] = ["name", "traffic", "mirror_traffic", "deployments"];

    #[test]
    fn a_dropped_letter_is_found() {
        assert_eq!(closest("trafic", ENDPOINT_KEYS), Some("traffic"));
    }

    #[test]
    fn a_swap_counts_as_one_edit() {
        assert_eq!(edit_distance("trafifc", "traffic"), 1);
        assert_eq!(closest("deplyoments", ENDPOINT_KEYS), Some("deployments"));
    }

    #[test]
    fn case_is_ignored() {
        assert_eq!(closest("Traffic", ENDPOINT_KEYS), Some("traffic"));
    }

    #[test]
    fn a_clipped_key_is_found_when_unambiguous() {
        assert_eq!(
            closest("primary", ["primary_key", "secondary_key"]),
            Some("primary_key")
        );
        assert_eq!(closest("max", ["max_a", "max_b"]), None);
    }

    #[test]
    fn an_unrelated_word_gets_no_suggestion() {
        assert_eq!(closest("weights", ENDPOINT_KEYS), None);
        assert_eq!(closest("x", ["blue", "green"]), None);
    }
}
