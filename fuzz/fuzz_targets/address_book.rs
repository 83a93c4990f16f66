//! The address book's JSON loader: never panics, never accepts a bad peer id or address, and
//! what it loads saves and loads again to the same entries.
#![no_main]

use glueberry::address_book::AddressBook;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = AddressBook::decode(data) {
        let again = AddressBook::decode(&AddressBook::encode(&entries)).expect("re-decodes");
        assert_eq!(again, entries);
    }
});
