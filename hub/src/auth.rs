//! People's credentials: argon2 password hashes and short-lived session tokens.
//!
//! A session token is 32 random bytes, shown to the user once; the store keeps only
//! its SHA-256, so a copy of the database does not let anyone sign in.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// Passwords and stems people choose most, refused by [`check_password`].
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    WeakPassword(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The password policy, checked wherever a person's password is set (added, changed,
/// chosen after a reset): at least [`MIN_PASSWORD_LEN`] characters, not the user
/// name inside it, and neither a common password nor a common one with digits and
/// punctuation around it.
pub fn check_password(password: &str, username: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::WeakPassword(format!(
            "a password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    let lower = password.to_lowercase();
    let name = username.trim().to_lowercase();
    if !name.is_empty() && lower.contains(&name) {
        return Err(Error::WeakPassword(
            "a password must not contain the user name".into(),
        ));
    }
    let stem =
        lower.trim_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation() || c == ' ');
    let distinct: std::collections::HashSet<char> = lower.chars().collect();
    let common = COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|c| c == lower || c == stem);
    if common || distinct.len() < 4 {
        return Err(Error::WeakPassword(
            "that password is one of the most common ones (or close to one); choose another".into(),
        ));
    }
    Ok(())
}

/// The argon2id hash of a password that passed [`check_password`] (or of a random
/// secret).
pub fn hash_password(password: &str) -> Result<String, Error> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::WeakPassword(format!(
            "a password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Shortest PIN of a bedside badge.
pub const MIN_PIN_LEN: usize = 6;

/// The argon2id hash of a badge's PIN, which must be at least [`MIN_PIN_LEN`] digits.
pub fn hash_pin(pin: &str) -> Result<String, String> {
    let pin = pin.trim();
    if pin.len() < MIN_PIN_LEN || !pin.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "a PIN is {MIN_PIN_LEN} or more digits, and nothing else"
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pin.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("PIN hashing failed: {e}"))
}

/// A new badge id: what its barcode encodes and the hand-held scanner types
/// (`BDG-` and 12 characters of Crockford's base 32, without I, L, O, U).
pub fn new_badge_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    let text: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("BDG-{text}")
}

/// Whether `password` matches the stored hash. A malformed hash never matches.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    match PasswordHash::new(stored_hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A new random secret (session or enrollment token), URL-safe base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a secret.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub use carrel_proto::enrollment::Token as EnrollmentToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_verifies_only_itself() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterz", &hash));
        assert!(!verify_password("correct horse battery", "not-a-hash"));
    }

    #[test]
    fn short_password_is_refused() {
        assert!(matches!(
            hash_password("short"),
            Err(Error::WeakPassword(_))
        ));
    }

    #[test]
    fn the_policy_refuses_short_common_and_name_bearing_passwords() {
        assert!(check_password("correct horse battery", "qa.grace").is_ok());
        assert!(check_password("qa-password-12345", "qa.one").is_ok());
        for (password, why) in [
            ("short-pass1", "at least 12"),
            ("Password2026!", "common"),
            ("password1234", "common"),
            ("123456789012", "common"),
            ("!!Qwertyuiop99", "common"),
            ("aaaaaaaaaaaaaaa", "common"),
            ("my-QA.Grace-password", "user name"),
        ] {
            let refused = check_password(password, "qa.grace").expect_err(password);
            assert!(refused.to_string().contains(why), "{password}: {refused}");
        }
    }
}
