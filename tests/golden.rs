//! Golden tests: each probe on captured kernel data.
