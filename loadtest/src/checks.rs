//! The guarantees checked after every run. A failed check is a violation:
//! it fails the run whatever the speed.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Default, Debug, Serialize)]
pub struct Checks {
    pub checks: Vec<Check>,
}

/// Details listed per failed check, so a report stays readable.
const DETAILS_MAX: usize = 5;

impl Checks {
    /// Records a check over many items: passes when `failures` is empty.
    pub fn each(&mut self, name: &str, checked: usize, failures: Vec<String>) {
        let ok = failures.is_empty();
        let detail = if ok {
            format!("{checked} checked")
        } else {
            let shown: Vec<_> = failures.iter().take(DETAILS_MAX).cloned().collect();
            format!("{} of {checked} failed: {}", failures.len(), shown.join("; "))
        };
        self.checks.push(Check { name: name.to_string(), ok, detail });
    }

    pub fn violations(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }
}
