//! Ratios of alternating runs with a probe attached and detached, and the noise they sit in
//! (shared by the benchmarks that measure what a probe costs the traffic it sees).

/// Per pair: the detached run, attached / detached, and a second detached run / the first
/// (an A/A test: the noise floor of this machine, printed beside the ratios it qualifies).
#[derive(Default)]
pub struct Ratios {
    off: Vec<f64>,
    on_off: Vec<f64>,
    off_off: Vec<f64>,
}

impl Ratios {
    pub fn add(&mut self, off: f64, on: f64, again: f64) {
        self.off.push(off);
        self.on_off.push(on / off);
        self.off_off.push(again / off);
    }

    /// One line: the median detached rate, the median of the per-pair ratios and their
    /// spread, the A/A ratio and its spread, the target.
    pub fn print(&mut self, name: &str, target: &str) {
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("({lo:.3}..{hi:.3})")
        };
        let (on_spread, off_spread) = (spread(&self.on_off), spread(&self.off_off));
        println!(
            "{name:>18} {:>10.0} {:>8.3} {on_spread:>15} {:>8.3} {off_spread:>15} {target:>8}",
            median(&mut self.off),
            median(&mut self.on_off),
            median(&mut self.off_off),
        );
    }
}

/// Pair `i`: the arm detached, attached, and detached again (`arm(attached)`), the first two
/// in alternating order so that a drift of the machine favours neither. The second detached
/// run is the A/A noise floor.
pub fn pair<T>(i: usize, arm: impl Fn(bool) -> T) -> (T, T, T) {
    if i.is_multiple_of(2) {
        let off = arm(false);
        let on = arm(true);
        (off, on, arm(false))
    } else {
        let on = arm(true);
        let off = arm(false);
        (off, on, arm(false))
    }
}

/// The header of [`Ratios::print`]'s lines.
pub fn header() {
    println!(
        "{:>18} {:>10} {:>8} {:>15} {:>8} {:>15} {:>8}",
        "workload", "off", "on/off", "(min..max)", "off/off", "(min..max)", "target"
    );
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
