//! Feeds arbitrary text to the recipe reader: a recipe file is written by people, so
//! whatever it holds must be refused with an error, never a panic.
#![no_main]

use carrel_proto::recipe::Recipe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(recipe) = Recipe::from_toml(&text) {
        // What is accepted is hashed and shipped to sites as canonical JSON: the site
        // must read back exactly the recipe the hub accepted.
        let json = recipe.to_canonical_json();
        let back = Recipe::from_json(&json).expect("an accepted recipe reads back from its canonical JSON");
        assert_eq!(back.sha256(), recipe.sha256());
    }
});
