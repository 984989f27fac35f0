//! Resolver and Debian version tests on recorded index fixtures.

use osk_builder::pkg::debian::index::{parse_atom, parse_packages};
use osk_builder::pkg::debian::resolve::{resolve, Universe};
use osk_builder::pkg::debian::version::Version;

fn universe() -> Universe {
    let text = include_str!("../fixtures/debian/Packages");
    Universe::new(
        parse_packages(text, "fixtures/debian/Packages").unwrap(),
        "amd64",
    )
}

fn names_versions(requests: &[&str]) -> Vec<(String, String)> {
    let reqs: Vec<_> = requests.iter().map(|r| parse_atom(r).unwrap()).collect();
    resolve(&universe(), &reqs, &[])
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.version.to_string()))
        .collect()
}

#[test]
fn highest_satisfying_version_first_alternative_and_virtuals() {
    let got = names_versions(&["app"]);
    let want = [
        ("app", "1.0-1"),
        // The alternative `mail-transport-agent | postfix` is virtual first:
        // its providers are tried in name order.
        ("exim4-daemon-light", "4.96-15"),
        ("libc6", "2.36-9+deb12u10"),
        // Epoch 1 wins over 2.1 and 2.0~rc1.
        ("libfoo", "1:0.5-1"),
        ("lynx", "2.9.0-1"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn essential_packages_are_not_pulled_in_unasked() {
    let got = names_versions(&["libc6"]);
    assert_eq!(got, [("libc6".to_string(), "2.36-9+deb12u10".to_string())]);
}

#[test]
fn request_with_constraint_picks_highest_matching() {
    let got = names_versions(&["libfoo (<< 2.1)"]);
    assert!(
        got.contains(&("libfoo".into(), "2.0~rc1-1".into())),
        "{got:?}"
    );
}

#[test]
fn versioned_dependency_needs_versioned_provides() {
    let got = names_versions(&["versioned-user"]);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["versioned-user", "virt-impl"]);
}

#[test]
fn missing_dependency_names_the_chain() {
    let err = resolve(&universe(), &[parse_atom("broken").unwrap()], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("does-not-exist (>= 1)"), "{err}");
    assert!(err.contains("middle <- broken <- (requested)"), "{err}");
}

#[test]
fn skipped_dependencies_count_as_met() {
    let reqs = [parse_atom("broken").unwrap()];
    let got = resolve(&universe(), &reqs, &["does-not-exist".to_string()]).unwrap();
    let names: Vec<&str> = got.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["broken", "libc6", "middle"]);
}

#[test]
fn other_architectures_are_invisible() {
    let err = resolve(&universe(), &[parse_atom("other-arch").unwrap()], &[]).unwrap_err();
    assert!(err.to_string().contains("no package of that name"), "{err}");
}

#[test]
fn one_version_per_package() {
    // libfoo is first chosen at its highest (1:0.5-1); a later request for
    // `libfoo (>= 2.0)` cannot add a second version.
    let reqs = [
        parse_atom("libfoo").unwrap(),
        parse_atom("libfoo (>= 2.0)").unwrap(),
    ];
    let got = resolve(&universe(), &reqs, &[]).unwrap();
    assert_eq!(got.iter().filter(|p| p.name == "libfoo").count(), 1);
    let reqs = [
        parse_atom("libfoo (<< 2.0)").unwrap(),
        parse_atom("libfoo (= 2.1-1)").unwrap(),
    ];
    let err = resolve(&universe(), &reqs, &[]).unwrap_err().to_string();
    assert!(err.contains("already chosen"), "{err}");
}

#[test]
fn debian_version_ordering() {
    let mut vs: Vec<Version> = [
        "1.0",
        "1:0.1",
        "1.0~rc1",
        "1.0-1",
        "1.0+b1",
        "0.9",
        "1.0-1~bpo1",
        "1.0a",
    ]
    .iter()
    .map(|s| Version::parse(s).unwrap())
    .collect();
    vs.sort();
    let sorted: Vec<&str> = vs.iter().map(Version::as_str).collect();
    assert_eq!(
        sorted,
        [
            "0.9",
            "1.0~rc1",
            "1.0",
            "1.0-1~bpo1",
            "1.0-1",
            "1.0a",
            "1.0+b1",
            "1:0.1"
        ]
    );
}
