//! Chain-of-identity (COI) identifiers.
//!
//! Format, modelled on ISBT 128 ST-028 (Chain of Identity Identifier):
//!
//! ```text
//!   G1234 26 000042 H
//!   |     |  |      +-- check character, ISO 7064 mod 37-2 over the 13 characters before it
//!   |     |  +--------- serial within the facility and year, 6 digits
//!   |     +------------ year of assignment, 2 digits
//!   +------------------ facility identification number (FIN), one letter and four digits
//! ```
//!
//! The identifier proper is the 13 data characters; the check character travels with
//! it everywhere it is written down or scanned, so a mistyped or misread label is caught.

use std::fmt;

/// Characters of the ISO 7064 mod 37-2 alphabet, indexed by their value.
const ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*";

/// Number of data characters (without the check character).
pub const DATA_LEN: usize = 13;

/// Why a text is not a valid COI identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a COI identifier has {expected} characters (13 data + 1 check), got {got}")]
    Length { expected: usize, got: usize },
    #[error("character {position} ({found:?}) is not allowed here: {expected}")]
    Character {
        position: usize,
        found: char,
        expected: &'static str,
    },
    #[error("check character is {found:?} but the data gives {expected:?}: the identifier was mistyped or misread")]
    Check { found: char, expected: char },
}

/// A validated COI identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coi(String);

impl Coi {
    /// Builds an identifier from its parts. `facility` is a letter and four digits.
    pub fn new(facility: &str, year: u16, serial: u32) -> Result<Coi, Error> {
        let data = format!("{facility}{:02}{:06}", year % 100, serial % 1_000_000);
        let check = check_character(&data)?;
        Coi::parse(&format!("{data}{check}"))
    }

    /// Parses and validates an identifier (exactly 14 characters, upper case).
    pub fn parse(text: &str) -> Result<Coi, Error> {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() != DATA_LEN + 1 {
            return Err(Error::Length {
                expected: DATA_LEN + 1,
                got: chars.len(),
            });
        }
        for (i, &c) in chars.iter().enumerate() {
            let (ok, expected) = match i {
                0 => (
                    c.is_ascii_uppercase(),
                    "an upper-case letter A-Z (facility)",
                ),
                1..=12 => (c.is_ascii_digit(), "a digit 0-9"),
                _ => (
                    c.is_ascii_digit() || c.is_ascii_uppercase() || c == '*',
                    "a check character 0-9, A-Z or *",
                ),
            };
            if !ok {
                return Err(Error::Character {
                    position: i + 1,
                    found: c,
                    expected,
                });
            }
        }
        let data: String = chars[..DATA_LEN].iter().collect();
        let expected = check_character(&data)?;
        if chars[DATA_LEN] != expected {
            return Err(Error::Check {
                found: chars[DATA_LEN],
                expected,
            });
        }
        Ok(Coi(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Coi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ISO 7064 mod 37-2 check character of `data` (digits, A-Z, `*`).
pub fn check_character(data: &str) -> Result<char, Error> {
    let mut sum: u32 = 0;
    for (i, c) in data.chars().enumerate() {
        let value = ALPHABET
            .iter()
            .position(|&a| a as char == c)
            .ok_or(Error::Character {
                position: i + 1,
                found: c,
                expected: "a digit, an upper-case letter or *",
            })? as u32;
        // Pure system, radix 2: fold from the left, doubling before each character,
        // which weights each character by a power of 2 counted from the right.
        sum = ((sum + value) * 2) % 37;
    }
    let check = (38 - sum % 37) % 37;
    Ok(ALPHABET[check as usize] as char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_example_has_check_h() {
        assert_eq!(check_character("G123498654321"), Ok('H'));
        assert!(Coi::parse("G123498654321H").is_ok());
    }

    #[test]
    fn built_identifiers_validate() {
        let coi = Coi::new("G1234", 2026, 42).expect("valid parts");
        assert_eq!(&coi.as_str()[..13], "G123426000042");
        assert_eq!(Coi::parse(coi.as_str()), Ok(coi));
    }

    #[test]
    fn every_single_character_change_is_detected() {
        let coi = Coi::new("K0001", 2026, 123_456).expect("valid parts");
        let original: Vec<char> = coi.as_str().chars().collect();
        for pos in 0..original.len() {
            for &b in ALPHABET.iter() {
                let c = b as char;
                if c == original[pos] {
                    continue;
                }
                let mut changed = original.clone();
                changed[pos] = c;
                let text: String = changed.into_iter().collect();
                assert!(Coi::parse(&text).is_err(), "{text} should not validate");
            }
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            Coi::parse("G12349865432"),
            Err(Error::Length {
                expected: 14,
                got: 12
            })
        );
        assert!(matches!(
            Coi::parse("g123498654321H"),
            Err(Error::Character { position: 1, .. })
        ));
        assert_eq!(
            Coi::parse("G123498654321J"),
            Err(Error::Check {
                found: 'J',
                expected: 'H'
            })
        );
    }
}
