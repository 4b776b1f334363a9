//! Chain-of-identity (COI) identifiers.
//!
//! Format, modelled on ISBT 128 ST-028 (Chain of Identity Identifier):
//!
//! ```text
//!   G1234 26 000042 N
//!   |     |  |      +-- check character, ISO 7064 mod 37-2 over the 13 characters before it
//!   |     |  +--------- serial within the facility and year, 6 digits
//!   |     +------------ year of assignment, 2 digits
//!   +------------------ facility identification number (FIN), one letter and four digits
//! ```
//!
//! The identifier proper is the 13 data characters; the check character travels with
//! it everywhere it is written down or typed, so a mistyped or misread label is caught.
//!
//! # Written, printed and scanned forms
//!
//! | Form | Example | Produced by | Check character |
//! |------|---------|-------------|-----------------|
//! | identifier (storage, wire, logs) | `G123426000042N` | [`Coi::as_str`], `Display` | last character |
//! | eye-readable text on the label | `G1234 26 000042 N` | [`Coi::eye_readable`] | last group |
//! | barcode data (Code 128) | `=G12342600004200` | [`Coi::barcode_data`] | not encoded |
//!
//! The barcode data follows the ISBT 128 donation identification number: the data
//! identifier `=`, the 13 data characters, then two flag digits, `00` ("flag not
//! used"). As in ISBT 128 the check character is not in the barcode (Code 128 carries
//! its own symbol check character); it is printed in the eye-readable text, for
//! whoever has to type the identifier in by hand.
//!
//! [`Coi::parse_scan`] reads what a hand-held scanner in keyboard-wedge mode types, or
//! what a person types, and gives the same [`Coi`] for each of these:
//!
//! | Input | Read as |
//! |-------|---------|
//! | `=G12342600004200` | barcode data; the check character is computed |
//! | `]C0=G12342600004200\r\n` | the same, after an AIM symbology identifier (`]` and two characters) and a line ending |
//! | `=g12342600004200` | the same, sent with caps lock on |
//! | `=G12342600004283` | barcode data whose flags (60 to 96) carry the check value, which must match (ISBT 128 flag type 3) |
//! | `G1234 26 000042 N`, `G1234-26-000042-N` | typed text; spaces and `-` are ignored, the check character must match |
//! | `g123426000042n` | typed text, lower case |
//!
//! Surrounding white space (including CR, LF and TAB) is ignored. In errors, a
//! character's position counts within the 14-character identifier, after any `=`,
//! spaces and `-` are taken away.

use std::fmt;

/// Characters of the ISO 7064 mod 37-2 alphabet, indexed by their value.
const ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*";

/// Number of data characters (without the check character).
pub const DATA_LEN: usize = 13;

/// Data identifier that starts the barcode form.
pub const BARCODE_DATA_IDENTIFIER: char = '=';

/// Flag characters written after the data in the barcode form: "flag not used".
pub const BARCODE_FLAGS: &str = "00";

/// Number of flag characters in the barcode form.
const FLAG_LEN: usize = 2;

/// Flag values 60 to 96 carry the check value plus 60 (ISBT 128 flag type 3).
const FLAG_CHECK_OFFSET: u32 = 60;

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
    #[error("nothing was scanned or typed")]
    Empty,
    #[error("a scanner symbology identifier is ']', a letter and a letter or digit (e.g. ']C0'), got {found:?}")]
    Symbology { found: String },
    #[error("the input starts with {found:?}, which is not a COI: a COI barcode starts with '=' and a letter, a typed COI with a letter")]
    Prefix { found: String },
    #[error(
        "COI barcode data is '=' and 15 characters (13 data + 2 flag digits), got '=' and {got}"
    )]
    BarcodeLength { got: usize },
    #[error("the last 2 characters of COI barcode data are flag digits, got {found:?}")]
    BarcodeFlags { found: String },
    #[error("the barcode flags {flags} carry check character {found:?} but the data gives {expected:?}: the label was misprinted or misread")]
    BarcodeCheck {
        flags: String,
        found: char,
        expected: char,
    },
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
        check_data_characters(&chars[..DATA_LEN])?;
        let found = chars[DATA_LEN];
        if !(found.is_ascii_digit() || found.is_ascii_uppercase() || found == '*') {
            return Err(Error::Character {
                position: DATA_LEN + 1,
                found,
                expected: "a check character 0-9, A-Z or *",
            });
        }
        let data: String = chars[..DATA_LEN].iter().collect();
        let expected = check_character(&data)?;
        if found != expected {
            return Err(Error::Check { found, expected });
        }
        Ok(Coi(text.to_owned()))
    }

    /// Parses what a hand-held scanner (keyboard wedge) or a person typed: the
    /// barcode data, with or without an AIM symbology identifier, or the identifier
    /// as text, with or without spaces and `-`, in either case. See the module
    /// documentation for the accepted forms.
    pub fn parse_scan(input: &str) -> Result<Coi, Error> {
        let trimmed = input.trim();
        let rest = strip_symbology_identifier(trimmed)?;
        // Scanners send lower case while caps lock is on. ASCII only: Unicode
        // upper-casing would turn e.g. 'ı' into 'I' and accept what no label shows.
        let rest = rest.to_ascii_uppercase();
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (None, _) => Err(Error::Empty),
            (Some(BARCODE_DATA_IDENTIFIER), Some(second)) if !second.is_ascii_alphanumeric() => {
                // Another ISBT 128 data structure, e.g. `=%` (blood groups).
                Err(Error::Prefix {
                    found: format!("{BARCODE_DATA_IDENTIFIER}{second}"),
                })
            }
            (Some(BARCODE_DATA_IDENTIFIER), _) => {
                parse_barcode_data(&rest[BARCODE_DATA_IDENTIFIER.len_utf8()..])
            }
            (Some(first), second) if first.is_ascii_punctuation() && first != '-' => {
                Err(Error::Prefix {
                    found: std::iter::once(first).chain(second).collect(),
                })
            }
            _ => {
                let text: String = rest.chars().filter(|&c| c != ' ' && c != '-').collect();
                Coi::parse(&text)
            }
        }
    }

    /// The data a label's barcode carries: `=`, the 13 data characters and the flags
    /// `00`, without the check character (as in ISBT 128), e.g. `=G12342600004200`.
    pub fn barcode_data(&self) -> String {
        format!(
            "{BARCODE_DATA_IDENTIFIER}{}{BARCODE_FLAGS}",
            &self.0[..DATA_LEN]
        )
    }

    /// The text printed under the barcode, grouped as facility, year, serial and
    /// check character, e.g. `G1234 26 000042 N`.
    pub fn eye_readable(&self) -> String {
        // The identifier is validated ASCII, so these byte ranges are characters.
        let s = &self.0;
        format!(
            "{} {} {} {}",
            &s[..5],
            &s[5..7],
            &s[7..DATA_LEN],
            &s[DATA_LEN..]
        )
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

/// Checks the 13 data characters: a letter then 12 digits.
fn check_data_characters(data: &[char]) -> Result<(), Error> {
    for (i, &c) in data.iter().enumerate() {
        let (ok, expected) = if i == 0 {
            (
                c.is_ascii_uppercase(),
                "an upper-case letter A-Z (facility)",
            )
        } else {
            (c.is_ascii_digit(), "a digit 0-9")
        };
        if !ok {
            return Err(Error::Character {
                position: i + 1,
                found: c,
                expected,
            });
        }
    }
    Ok(())
}

/// Strips an AIM symbology identifier (ISO/IEC 15424: `]`, the code character and a
/// modifier, e.g. `]C0` for Code 128) that a scanner may send before the data.
fn strip_symbology_identifier(input: &str) -> Result<&str, Error> {
    let Some(after) = input.strip_prefix(']') else {
        return Ok(input);
    };
    let mut chars = after.chars();
    match (chars.next(), chars.next()) {
        (Some(code), Some(modifier))
            if code.is_ascii_alphabetic() && modifier.is_ascii_alphanumeric() =>
        {
            Ok(chars.as_str())
        }
        (code, modifier) => Err(Error::Symbology {
            found: std::iter::once(']').chain(code).chain(modifier).collect(),
        }),
    }
}

/// Reads barcode data after the `=`: 13 data characters and 2 flag digits.
fn parse_barcode_data(body: &str) -> Result<Coi, Error> {
    let chars: Vec<char> = body.chars().collect();
    if chars.len() != DATA_LEN + FLAG_LEN {
        return Err(Error::BarcodeLength { got: chars.len() });
    }
    let (data, flags) = chars.split_at(DATA_LEN);
    check_data_characters(data)?;
    let flags: String = flags.iter().collect();
    let flag_value = flags
        .chars()
        .try_fold(0u32, |value, c| c.to_digit(10).map(|d| value * 10 + d))
        .ok_or_else(|| Error::BarcodeFlags {
            found: flags.clone(),
        })?;
    let data: String = data.iter().collect();
    let expected = check_character(&data)?;
    if let Some(check_value) = flag_value.checked_sub(FLAG_CHECK_OFFSET) {
        if let Some(&found) = ALPHABET.get(check_value as usize) {
            let found = found as char;
            if found != expected {
                return Err(Error::BarcodeCheck {
                    flags,
                    found,
                    expected,
                });
            }
        }
    }
    Coi::parse(&format!("{data}{expected}"))
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

    /// `G1234 26 000042`, check character N.
    fn example() -> Coi {
        Coi::new("G1234", 2026, 42).expect("valid parts")
    }

    #[test]
    fn label_forms_of_the_example() {
        let coi = example();
        assert_eq!(coi.as_str(), "G123426000042N");
        assert_eq!(coi.barcode_data(), "=G12342600004200");
        assert_eq!(coi.eye_readable(), "G1234 26 000042 N");
    }

    #[test]
    fn every_accepted_form_reads_back_the_same_identifier() {
        let coi = example();
        for input in [
            "=G12342600004200",
            "=G12342600004200\r\n",
            "=G12342600004200\r",
            "=G12342600004200\n",
            "\t=G12342600004200\t",
            "]C0=G12342600004200",
            "]C0=G12342600004200\r\n",
            "]d1=G12342600004200\r\n",
            "=g12342600004200",
            "]C0=g12342600004200\r\n",
            "=G12342600004283",
            "=G12342600004201",
            "G123426000042N",
            "G1234 26 000042 N",
            "  G1234 26 000042 N\r\n",
            "G1234-26-000042-N",
            "g1234 26 000042 n",
            "g123426000042n",
            "]C0G123426000042N",
        ] {
            assert_eq!(Coi::parse_scan(input).as_ref(), Ok(&coi), "{input:?}");
        }
    }

    #[test]
    fn forms_round_trip_through_parse_scan() {
        let coi = Coi::parse("G123498654321H").expect("published example");
        assert_eq!(coi.barcode_data(), "=G12349865432100");
        assert_eq!(Coi::parse_scan(&coi.barcode_data()).as_ref(), Ok(&coi));
        assert_eq!(Coi::parse_scan(&coi.eye_readable()).as_ref(), Ok(&coi));
        assert_eq!(Coi::parse_scan(coi.as_str()).as_ref(), Ok(&coi));
        // ISBT 128 worked example: the flags carry 60 + 17 = 77 for H.
        assert_eq!(Coi::parse_scan("=G12349865432177"), Ok(coi));
    }

    #[test]
    fn a_check_character_of_star_survives_every_form() {
        // The check value 36 is written '*'; find an identifier that has it.
        let coi = (0..1_000)
            .map(|serial| Coi::new("A0001", 2026, serial).expect("valid parts"))
            .find(|coi| coi.as_str().ends_with('*'))
            .expect("some serial has check character *");
        assert!(coi.eye_readable().ends_with(" *"));
        assert_eq!(Coi::parse_scan(&coi.barcode_data()).as_ref(), Ok(&coi));
        assert_eq!(Coi::parse_scan(&coi.eye_readable()).as_ref(), Ok(&coi));
        let flags_96 = format!("={}96", &coi.as_str()[..DATA_LEN]);
        assert_eq!(Coi::parse_scan(&flags_96), Ok(coi));
    }

    #[test]
    fn empty_input_is_refused() {
        for input in ["", "   ", "\r\n", "\t \r\n", "]C0", "]C0\r\n"] {
            assert_eq!(Coi::parse_scan(input), Err(Error::Empty), "{input:?}");
        }
    }

    #[test]
    fn malformed_symbology_identifier_is_refused() {
        assert_eq!(
            Coi::parse_scan("]"),
            Err(Error::Symbology { found: "]".into() })
        );
        assert_eq!(
            Coi::parse_scan("]C"),
            Err(Error::Symbology { found: "]C".into() })
        );
        assert_eq!(
            Coi::parse_scan("]0C=G12342600004200"),
            Err(Error::Symbology {
                found: "]0C".into()
            })
        );
        assert_eq!(
            Coi::parse_scan("]C-=G12342600004200"),
            Err(Error::Symbology {
                found: "]C-".into()
            })
        );
    }

    #[test]
    fn other_isbt_128_data_structures_and_unknown_prefixes_are_refused() {
        // `=%` is the ISBT 128 blood groups data structure, `=<` a product code.
        assert_eq!(
            Coi::parse_scan("=%5100"),
            Err(Error::Prefix { found: "=%".into() })
        );
        assert_eq!(
            Coi::parse_scan("]C0=<E0001V00"),
            Err(Error::Prefix { found: "=<".into() })
        );
        assert_eq!(
            Coi::parse_scan("&;G12342600004200"),
            Err(Error::Prefix { found: "&;".into() })
        );
        assert_eq!(
            Coi::parse_scan("*"),
            Err(Error::Prefix { found: "*".into() })
        );
    }

    #[test]
    fn barcode_of_the_wrong_length_is_refused() {
        for (input, got) in [
            ("=", 0),
            ("=G1234260000420", 14),
            ("=G123426000042", 13),
            ("=G123426000042000", 16),
            // The check character does not belong in the barcode.
            ("=G123426000042N00", 16),
        ] {
            assert_eq!(
                Coi::parse_scan(input),
                Err(Error::BarcodeLength { got }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn barcode_with_bad_characters_or_flags_is_refused() {
        assert_eq!(
            Coi::parse_scan("=GX2342600004200"),
            Err(Error::Character {
                position: 2,
                found: 'X',
                expected: "a digit 0-9"
            })
        );
        assert!(matches!(
            Coi::parse_scan("=112342600004200"),
            Err(Error::Character { position: 1, .. })
        ));
        assert_eq!(
            Coi::parse_scan("=G1234260000420A"),
            Err(Error::BarcodeFlags { found: "0A".into() })
        );
        assert_eq!(
            Coi::parse_scan("=G123426000042 0"),
            Err(Error::BarcodeFlags { found: " 0".into() })
        );
    }

    #[test]
    fn barcode_whose_flags_carry_another_check_value_is_refused() {
        // 60 + 17 is H, but the data gives N.
        assert_eq!(
            Coi::parse_scan("=G12342600004277"),
            Err(Error::BarcodeCheck {
                flags: "77".into(),
                found: 'H',
                expected: 'N'
            })
        );
        // A misread data digit is caught by the flags, not otherwise.
        assert!(matches!(
            Coi::parse_scan("=G12342600004383"),
            Err(Error::BarcodeCheck { .. })
        ));
        assert!(Coi::parse_scan("=G12342600004300").is_ok());
    }

    #[test]
    fn typed_text_must_carry_the_right_check_character() {
        assert_eq!(
            Coi::parse_scan("G1234 26 000042 H"),
            Err(Error::Check {
                found: 'H',
                expected: 'N'
            })
        );
        // Without its check character a typed identifier is too short.
        assert_eq!(
            Coi::parse_scan("G1234 26 000042"),
            Err(Error::Length {
                expected: 14,
                got: 13
            })
        );
        // Separators are spaces and '-', not '_' or tabs inside the text.
        assert_eq!(
            Coi::parse_scan("G1234_26_000042_N"),
            Err(Error::Length {
                expected: 14,
                got: 17
            })
        );
        assert_eq!(
            Coi::parse_scan("G1234_6000042N"),
            Err(Error::Character {
                position: 6,
                found: '_',
                expected: "a digit 0-9"
            })
        );
        assert!(matches!(
            Coi::parse_scan("G1234\t6000042N"),
            Err(Error::Character { position: 6, .. })
        ));
    }

    #[test]
    fn only_ascii_is_upper_cased() {
        // U+0131 (dotless i) upper-cases to 'I' under Unicode rules; no label shows it.
        let with_dotless_i = "\u{131}123426000042N";
        assert!(matches!(
            Coi::parse_scan(with_dotless_i),
            Err(Error::Character {
                position: 1,
                found: '\u{131}',
                ..
            })
        ));
        let fullwidth_digit = "G\u{ff11}23426000042N";
        assert!(matches!(
            Coi::parse_scan(fullwidth_digit),
            Err(Error::Character { position: 2, .. })
        ));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let message = |input: &str| Coi::parse_scan(input).expect_err("refused").to_string();
        assert_eq!(message(" \r\n"), "nothing was scanned or typed");
        assert!(message("]C").contains("\"]C\""), "{}", message("]C"));
        assert!(
            message("=%5100").contains("\"=%\""),
            "{}",
            message("=%5100")
        );
        assert!(message("=G123").contains("got '=' and 4"));
        assert!(message("=G1234260000420A").contains("flag digits"));
        assert!(message("=G12342600004277").contains("misprinted or misread"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Valid parts: facility letter and 4 digits, a year, a serial.
        fn parts() -> impl Strategy<Value = (String, u16, u32)> {
            ("[A-Z][0-9]{4}", 2000u16..2100, 0u32..1_000_000)
        }

        fn coi() -> impl Strategy<Value = Coi> {
            parts().prop_map(|(facility, year, serial)| {
                Coi::new(&facility, year, serial).expect("valid parts")
            })
        }

        proptest! {
            #[test]
            fn built_identifiers_validate_and_every_form_reads_back(
                (facility, year, serial) in parts()
            ) {
                let coi = Coi::new(&facility, year, serial).expect("valid parts");
                let expected_data = format!("{facility}{:02}{serial:06}", year % 100);
                prop_assert_eq!(&coi.as_str()[..DATA_LEN], expected_data.as_str());
                prop_assert_eq!(Coi::parse(coi.as_str()), Ok(coi.clone()));
                prop_assert_eq!(Coi::parse_scan(&coi.barcode_data()), Ok(coi.clone()));
                prop_assert_eq!(Coi::parse_scan(&coi.eye_readable()), Ok(coi.clone()));
                prop_assert_eq!(Coi::parse_scan(coi.as_str()), Ok(coi.clone()));
                let scanned = format!("]C0{}\r\n", coi.barcode_data().to_ascii_lowercase());
                prop_assert_eq!(Coi::parse_scan(&scanned), Ok(coi.clone()));
            }

            /// ISO 7064 mod 37-2 detects every single substitution: each weight is a
            /// power of 2, never 0 mod 37, and two different values differ by 1 to 36.
            #[test]
            fn any_single_substitution_is_rejected(
                coi in coi(),
                position in 0usize..DATA_LEN + 1,
                replacement in prop::char::any(),
            ) {
                let mut chars: Vec<char> = coi.as_str().chars().collect();
                prop_assume!(chars[position] != replacement);
                chars[position] = replacement;
                let changed: String = chars.into_iter().collect();
                prop_assert!(Coi::parse(&changed).is_err(), "{} accepted", changed);
            }

            /// The same, drawing the replacement from the check alphabet, where a
            /// substitution gets past the character rules and only the check can catch it.
            #[test]
            fn any_single_substitution_within_the_alphabet_is_rejected(
                coi in coi(),
                position in 0usize..DATA_LEN + 1,
                replacement in 0usize..ALPHABET.len(),
            ) {
                let mut chars: Vec<char> = coi.as_str().chars().collect();
                let replacement = ALPHABET[replacement] as char;
                prop_assume!(chars[position] != replacement);
                chars[position] = replacement;
                let changed: String = chars.into_iter().collect();
                prop_assert!(Coi::parse(&changed).is_err(), "{} accepted", changed);
                prop_assert!(Coi::parse_scan(&changed).is_err(), "{} accepted by parse_scan", changed);
            }

            /// Swapping neighbours with values a and b at weights 2w and w changes the
            /// sum by (a - b)w, which is not 0 mod 37 when a != b: always detected.
            #[test]
            fn any_adjacent_transposition_is_rejected(
                coi in coi(),
                position in 0usize..DATA_LEN,
            ) {
                let mut chars: Vec<char> = coi.as_str().chars().collect();
                prop_assume!(chars[position] != chars[position + 1]);
                chars.swap(position, position + 1);
                let changed: String = chars.into_iter().collect();
                prop_assert!(Coi::parse(&changed).is_err(), "{} accepted", changed);
                prop_assert!(Coi::parse_scan(&changed).is_err(), "{} accepted by parse_scan", changed);
            }

            #[test]
            fn parse_scan_never_panics(input in any::<String>()) {
                let _ = Coi::parse_scan(&input);
            }

            /// Inputs near the accepted forms reach deeper than arbitrary strings.
            #[test]
            fn parse_scan_never_panics_near_the_accepted_forms(
                input in "(\\][A-Za-z0-9]{0,2})?[=&%<]?[A-Za-z0-9 *\\-\r\n\t\u{131}\u{e9}]{0,20}"
            ) {
                if let Ok(coi) = Coi::parse_scan(&input) {
                    prop_assert_eq!(Coi::parse(coi.as_str()), Ok(coi.clone()));
                    prop_assert_eq!(Coi::parse_scan(&coi.barcode_data()), Ok(coi.clone()));
                }
            }
        }
    }
}
