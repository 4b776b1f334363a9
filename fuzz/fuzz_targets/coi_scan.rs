//! Feeds arbitrary input to the COI parsers: what a scanner or a person could type.
//! Nothing may panic, and whatever is accepted must be a valid identifier that reads
//! back the same from each of its label forms.
#![no_main]

use carrel_proto::coi::Coi;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(coi) = Coi::parse_scan(&text) {
        assert_eq!(
            Coi::parse(coi.as_str()).as_ref(),
            Ok(&coi),
            "an accepted scan {text:?} must be a valid identifier"
        );
        assert_eq!(
            Coi::parse_scan(&coi.barcode_data()).as_ref(),
            Ok(&coi),
            "barcode data of {coi} must read back"
        );
        assert_eq!(
            Coi::parse_scan(&coi.eye_readable()).as_ref(),
            Ok(&coi),
            "eye-readable text of {coi} must read back"
        );
    }

    if let Ok(coi) = Coi::parse(&text) {
        assert_eq!(coi.as_str(), text, "parse keeps the text as given");
        assert_eq!(
            Coi::parse_scan(&text).as_ref(),
            Ok(&coi),
            "what parse accepts, parse_scan accepts as the same identifier"
        );
    }
});
