//! Keeping an example configuration file true: which settings of a configuration
//! (its defaults serialized as TOML) an example file does not show. The hub's and
//! the agent's tests check `deploy/*.example.toml` with it.

/// The keys of `defaults` (sections flattened to the key's own name) that `example`
/// shows nowhere, as `key = ...` (commented out or not) or as `[[key]]`.
pub fn settings_not_shown(defaults: &toml::Value, example: &str) -> Vec<String> {
    let mut keys = Vec::new();
    leaf_keys(defaults, &mut keys);
    keys.into_iter()
        .filter(|key| {
            !example.lines().any(|line| {
                let line = line.trim_start().trim_start_matches('#').trim_start();
                line.contains(&format!("[[{key}]]"))
                    || line
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        })
        .collect()
}

fn leaf_keys(value: &toml::Value, keys: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, value) in table {
            match value {
                toml::Value::Table(_) => leaf_keys(value, keys),
                _ => keys.push(key.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_counts_as_shown_commented_out_or_as_an_array_of_tables() {
        let defaults: toml::Value =
            toml::from_str("a = 1\nb = 2\nsteps = []\n[s]\nc = 3\nd = 4\n").expect("toml");
        let example = "a = 1\n# b = 2\n# [[steps]]\n[s]\nc=3\n# dd = 4\n";
        assert_eq!(settings_not_shown(&defaults, example), vec!["d".to_owned()]);
    }
}
