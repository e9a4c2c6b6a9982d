//! Compile-pass and compile-fail cases of `dag!`. Regenerate the `.stderr`
//! snapshots with `TRYBUILD=overwrite` and read the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
