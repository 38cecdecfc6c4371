//! Seat maps: the static shape of a venue and the search for adjacent seats.
//!
//! A seat map never changes after an event is created; seat statuses live in
//! the event actor and the hot store. Seats are addressed inside the engine by
//! their index (`SeatIdx`) and outside by a label `"{section}-{row}-{col}"`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub type SeatIdx = u32;

/// One seat as the operator described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatDef {
    pub section: String,
    pub row: u32,
    pub col: u32,
    pub category: String,
}

impl SeatDef {
    pub fn label(&self) -> String {
        format!("{}-{}-{}", self.section, self.row, self.col)
    }
}

/// A rectangular block of seats, all of one category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionLayout {
    pub name: String,
    pub rows: u32,
    pub cols: u32,
    pub category: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeatMapError {
    #[error("an event needs at least one seat")]
    Empty,
    #[error("{count} seats is above the maximum of {max}")]
    TooManySeats { count: u64, max: u32 },
    #[error("section name {0:?} must be 1-32 letters, digits, spaces or underscores")]
    BadSectionName(String),
    #[error("rows and cols start at 1")]
    ZeroRowOrCol,
    #[error("seat {0} appears twice")]
    DuplicateSeat(String),
    #[error("seat {seat} names unknown category {category:?}")]
    UnknownCategory { seat: String, category: String },
}

/// Seats of one row of one section, ordered by column.
#[derive(Clone, Debug)]
struct Row {
    seats: Vec<SeatIdx>,
    /// `min_col + max_col` of the row: twice its centre, kept integral.
    centre_x2: i64,
}

#[derive(Clone, Debug)]
pub struct SeatMap {
    seats: Vec<SeatDef>,
    rows: Vec<Row>,
    /// Row index of each seat.
    row_of: Vec<u32>,
    by_label: HashMap<String, SeatIdx>,
}

fn valid_section_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
}

impl SeatMap {
    /// Expands section layouts into seats (rows and cols numbered from 1).
    pub fn from_layout(sections: &[SectionLayout], categories: &[&str], seats_max: u32) -> Result<Self, SeatMapError> {
        let count: u64 = sections.iter().map(|s| u64::from(s.rows) * u64::from(s.cols)).sum();
        if count > u64::from(seats_max) {
            return Err(SeatMapError::TooManySeats { count, max: seats_max });
        }
        let mut seats = Vec::with_capacity(count as usize);
        for s in sections {
            for row in 1..=s.rows {
                for col in 1..=s.cols {
                    seats.push(SeatDef { section: s.name.clone(), row, col, category: s.category.clone() });
                }
            }
        }
        Self::from_seats(seats, categories, seats_max)
    }

    pub fn from_seats(seats: Vec<SeatDef>, categories: &[&str], seats_max: u32) -> Result<Self, SeatMapError> {
        if seats.is_empty() {
            return Err(SeatMapError::Empty);
        }
        if seats.len() as u64 > u64::from(seats_max) {
            return Err(SeatMapError::TooManySeats { count: seats.len() as u64, max: seats_max });
        }
        let mut by_label = HashMap::with_capacity(seats.len());
        let mut row_keys: HashMap<(&str, u32), u32> = HashMap::new();
        let mut rows: Vec<Vec<SeatIdx>> = Vec::new();
        let mut row_of = Vec::with_capacity(seats.len());
        for (i, s) in seats.iter().enumerate() {
            if !valid_section_name(&s.section) {
                return Err(SeatMapError::BadSectionName(s.section.clone()));
            }
            if s.row == 0 || s.col == 0 {
                return Err(SeatMapError::ZeroRowOrCol);
            }
            let label = s.label();
            if !categories.contains(&s.category.as_str()) {
                return Err(SeatMapError::UnknownCategory { seat: label, category: s.category.clone() });
            }
            if by_label.insert(label.clone(), i as SeatIdx).is_some() {
                return Err(SeatMapError::DuplicateSeat(label));
            }
            let next = rows.len() as u32;
            let r = *row_keys.entry((s.section.as_str(), s.row)).or_insert(next);
            if r == next {
                rows.push(Vec::new());
            }
            rows[r as usize].push(i as SeatIdx);
            row_of.push(r);
        }
        let rows = rows
            .into_iter()
            .map(|mut idx| {
                idx.sort_by_key(|i| seats[*i as usize].col);
                let min = i64::from(seats[idx[0] as usize].col);
                let max = i64::from(seats[idx[idx.len() - 1] as usize].col);
                Row { seats: idx, centre_x2: min + max }
            })
            .collect();
        Ok(SeatMap { seats, rows, row_of, by_label })
    }

    pub fn len(&self) -> usize {
        self.seats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    pub fn seat(&self, idx: SeatIdx) -> &SeatDef {
        &self.seats[idx as usize]
    }

    pub fn seats(&self) -> &[SeatDef] {
        &self.seats
    }

    pub fn index_of(&self, label: &str) -> Option<SeatIdx> {
        self.by_label.get(label).copied()
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    pub fn row_of(&self, idx: SeatIdx) -> u32 {
        self.row_of[idx as usize]
    }

    /// Finds `n` adjacent free seats of `category` in one row.
    ///
    /// Adjacent means consecutive column numbers. Among all windows it
    /// prefers, in order: one that leaves no single free seat stranded
    /// between taken seats or a row end (an orphan nobody can buy as a pair);
    /// one whose centre is nearest the row's centre; the earlier row.
    /// `row_free[r]` counts free seats of row `r` so full rows are skipped
    /// without a scan.
    pub fn find_adjacent(
        &self,
        category: &str,
        n: u32,
        is_free: impl Fn(SeatIdx) -> bool,
        row_free: &[u32],
    ) -> Option<Vec<SeatIdx>> {
        let n = n as usize;
        if n == 0 {
            return None;
        }
        // (orphan, distance from centre ×2, row) — lower is better.
        let mut best: Option<((bool, i64, usize), usize, usize)> = None;
        for (r, row) in self.rows.iter().enumerate() {
            if (row_free[r] as usize) < n {
                continue;
            }
            let mut i = 0;
            while i < row.seats.len() {
                // A run: maximal block of free seats of the category with
                // consecutive columns.
                let ok = |k: usize| {
                    let s = row.seats[k];
                    is_free(s) && self.seats[s as usize].category == category
                };
                if !ok(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i + 1 < row.seats.len()
                    && ok(i + 1)
                    && self.seats[row.seats[i + 1] as usize].col == self.seats[row.seats[i] as usize].col + 1
                {
                    i += 1;
                }
                let len = i - start + 1;
                i += 1;
                if len < n {
                    continue;
                }
                for off in 0..=(len - n) {
                    let left_gap = off;
                    let right_gap = len - n - off;
                    let orphan = left_gap == 1 || right_gap == 1;
                    let first_col = i64::from(self.seats[row.seats[start + off] as usize].col);
                    let centre_x2 = 2 * first_col + n as i64 - 1;
                    let score = (orphan, (centre_x2 - row.centre_x2).abs(), r);
                    if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                        best = Some((score, r, start + off));
                    }
                }
            }
        }
        best.map(|(_, r, at)| self.rows[r].seats[at..at + n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_row(cols: u32) -> SeatMap {
        SeatMap::from_layout(
            &[SectionLayout { name: "A".into(), rows: 1, cols, category: "std".into() }],
            &["std"],
            1000,
        )
        .unwrap()
    }

    fn cols(map: &SeatMap, seats: &[SeatIdx]) -> Vec<u32> {
        seats.iter().map(|s| map.seat(*s).col).collect()
    }

    #[test]
    fn layout_expands_into_labelled_seats() {
        let map = SeatMap::from_layout(
            &[
                SectionLayout { name: "A".into(), rows: 2, cols: 3, category: "vip".into() },
                SectionLayout { name: "B".into(), rows: 1, cols: 4, category: "std".into() },
            ],
            &["vip", "std"],
            100,
        )
        .unwrap();
        assert_eq!(map.len(), 10);
        assert_eq!(map.row_count(), 3);
        let idx = map.index_of("A-2-3").unwrap();
        assert_eq!(map.seat(idx).category, "vip");
        assert_eq!(map.index_of("C-1-1"), None);
    }

    #[test]
    fn bad_seat_maps_are_refused() {
        let seat = |s: &str, r, c, cat: &str| SeatDef { section: s.into(), row: r, col: c, category: cat.into() };
        assert_eq!(SeatMap::from_seats(vec![], &["a"], 10).unwrap_err(), SeatMapError::Empty);
        assert!(matches!(
            SeatMap::from_seats(vec![seat("A", 1, 1, "a"), seat("A", 1, 1, "a")], &["a"], 10),
            Err(SeatMapError::DuplicateSeat(_))
        ));
        assert!(matches!(
            SeatMap::from_seats(vec![seat("A", 1, 1, "x")], &["a"], 10),
            Err(SeatMapError::UnknownCategory { .. })
        ));
        assert!(matches!(
            SeatMap::from_seats(vec![seat("A-1", 1, 1, "a")], &["a"], 10),
            Err(SeatMapError::BadSectionName(_))
        ));
        assert_eq!(
            SeatMap::from_seats(vec![seat("A", 0, 1, "a")], &["a"], 10).unwrap_err(),
            SeatMapError::ZeroRowOrCol
        );
        assert!(matches!(
            SeatMap::from_layout(
                &[SectionLayout { name: "A".into(), rows: 1000, cols: 1000, category: "a".into() }],
                &["a"],
                10
            ),
            Err(SeatMapError::TooManySeats { .. })
        ));
    }

    #[test]
    fn adjacent_search_prefers_the_centre_of_the_row() {
        let map = one_row(10);
        let got = map.find_adjacent("std", 2, |_| true, &[10]).unwrap();
        assert_eq!(cols(&map, &got), vec![5, 6]);
    }

    #[test]
    fn adjacent_search_never_strands_a_single_seat_when_it_can_avoid_it() {
        // Row of 6: cols 1..6, col 1 taken. Free run is 2..6 (5 seats).
        // Taking 2 at the centre (3-4 or 4-5) would leave a single seat.
        let map = one_row(6);
        let taken = [map.index_of("A-1-1").unwrap()];
        let got = map.find_adjacent("std", 2, |s| !taken.contains(&s), &[5]).unwrap();
        let c = cols(&map, &got);
        // Either 2-3 (leaves 4-6) or 5-6 (leaves 2-4): no orphan.
        assert!(c == vec![2, 3] || c == vec![5, 6], "{c:?}");
    }

    #[test]
    fn adjacent_search_needs_consecutive_columns_and_the_category() {
        let map = SeatMap::from_seats(
            vec![
                SeatDef { section: "A".into(), row: 1, col: 1, category: "a".into() },
                SeatDef { section: "A".into(), row: 1, col: 3, category: "a".into() },
                SeatDef { section: "A".into(), row: 1, col: 4, category: "b".into() },
            ],
            &["a", "b"],
            10,
        )
        .unwrap();
        assert_eq!(map.find_adjacent("a", 2, |_| true, &[3]), None);
        assert_eq!(map.find_adjacent("a", 1, |_| true, &[3]).map(|v| v.len()), Some(1));
    }

    #[test]
    fn full_rows_are_skipped() {
        let map = one_row(4);
        assert_eq!(map.find_adjacent("std", 2, |_| true, &[1]), None);
    }
}
