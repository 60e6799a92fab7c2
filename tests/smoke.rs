mod common;
#[test]
fn rng_works() {
    let mut r = common::rng(1);
    let v = common::uniform(&mut r, 4, -1.0, 1.0);
    assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
}
