//! The demo embeds the browser builds of two npm packages for the call
//! page's SockJS/STOMP fallback. They must be the very files of the
//! versions tests/js/package-lock.json pins (installed by tests/run.sh with
//! `npm ci`), unchanged, with their licences beside them, and the demo must
//! serve them as they are.

use std::path::Path;

/// (embedded copy, file in the installed npm package, licence copy, the
/// package's licence file, version the lock pins)
const VENDORED: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "src/demo/assets/vendor/sockjs.min.js",
        "tests/js/node_modules/sockjs-client/dist/sockjs.min.js",
        "src/demo/assets/vendor/LICENSE.sockjs-client",
        "tests/js/node_modules/sockjs-client/LICENSE",
        "node_modules/sockjs-client",
        "1.6.1",
    ),
    (
        "src/demo/assets/vendor/stomp.umd.min.js",
        "tests/js/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js",
        "src/demo/assets/vendor/LICENSE.stompjs",
        "tests/js/node_modules/@stomp/stompjs/LICENSE",
        "node_modules/@stomp/stompjs",
        "7.5.0",
    ),
];

fn read(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (tests/run.sh installs the npm packages: cd tests/js && npm ci --ignore-scripts)",
            full.display()
        )
    })
}

#[test]
fn vendored_scripts_are_the_pinned_packages_files_unchanged() {
    let lock = String::from_utf8(read("tests/js/package-lock.json")).unwrap();
    for &(copy, original, licence, original_licence, lock_key, version) in VENDORED {
        // The lock pins the version the copy claims to be.
        let entry = lock
            .find(&format!("\"{lock_key}\": {{"))
            .unwrap_or_else(|| panic!("{lock_key} not in package-lock.json"));
        let pinned = &lock[entry..];
        let pinned = &pinned[..pinned.find('}').unwrap()];
        assert!(
            pinned.contains(&format!("\"version\": \"{version}\"")),
            "package-lock.json pins another version of {lock_key}: {pinned}"
        );
        assert!(
            read(copy) == read(original),
            "{copy} differs from {original}: copy the file again after changing the lock"
        );
        assert!(
            read(licence) == read(original_licence),
            "{licence} differs from {original_licence}"
        );
    }
}
