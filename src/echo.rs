//! How values from outside (a config file, a request) appear in error messages: bounded, so a
//! 5 MB value never comes back in one line.

/// Echoed values are cut to this many characters.
pub const MAX_ECHO: usize = 80;

/// A value as an error message may show it: quoted, at most [`MAX_ECHO`] characters.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}
