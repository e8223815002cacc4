//! A small SVG chart of grouped bars with min–max whiskers, panels stacked vertically (no
//! plotting dependency: the output is plain SVG text).

use std::fmt::Write as _;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// The whole picture.
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
    /// A line of small print at the bottom.
    pub footer: String,
}

/// One plot: a group of bars per category, one bar per series.
pub struct Panel {
    pub top: f64,
    pub height: f64,
    pub title: String,
    pub ylabel: String,
    pub series: Vec<Series>,
    pub groups: Vec<Group>,
}

pub struct Series {
    pub name: String,
    pub color: String,
}

/// A category: its label, a note below it, and one bar per series (`None`: not measured).
pub struct Group {
    pub label: String,
    pub note: Option<String>,
    pub bars: Vec<Option<Bar>>,
}

/// A bar's height and its whisker.
#[derive(Clone, Copy)]
pub struct Bar {
    pub value: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Where one bar goes, and what its tooltip says.
struct Slot<'a> {
    x: f64,
    w: f64,
    what: String,
    color: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `v`.
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v == v.round() || v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    pub fn svg(&self) -> String {
        let (w, h) = (WIDTH, HEIGHT);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
            w / 2.0,
            esc(&self.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="42" text-anchor="middle" font-size="11" fill="#444">{}</text>"##,
            w / 2.0,
            esc(&self.subtitle)
        );
        for p in &self.panels {
            p.draw(&mut s);
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            w / 2.0,
            h - 10.0,
            esc(&self.footer)
        );
        s += "</svg>\n";
        s
    }
}

// === impl Panel ===

impl Panel {
    fn vmax(&self) -> f64 {
        let top = self
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().flatten())
            .map(|b| b.max.unwrap_or(0.0).max(b.value))
            .fold(0.0_f64, f64::max);
        nice_ceiling(top)
    }

    fn y(&self, v: f64, vmax: f64) -> f64 {
        self.top + self.height - v / vmax * self.height
    }

    fn group_w(&self) -> f64 {
        (WIDTH - LEFT - RIGHT) / self.groups.len().max(1) as f64
    }

    fn draw(&self, s: &mut String) {
        let vmax = self.vmax();
        self.axes(s, vmax);
        self.legend(s);
        for (i, g) in self.groups.iter().enumerate() {
            self.group(s, i, g, vmax);
        }
    }

    /// Grid, ticks, axes, the y label and the panel's title.
    fn axes(&self, s: &mut String, vmax: f64) {
        let (top, bottom) = (self.top, self.top + self.height);
        for k in 0..=5 {
            let v = vmax * f64::from(k) / 5.0;
            let yy = self.y(v, vmax);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                yy + 4.0,
                trim_num(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom:.1}" stroke="black"/><line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="black"/>"#,
            WIDTH - RIGHT,
        );
        let mid = top + self.height / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="22" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 22 {mid:.1})">{}</text>"#,
            esc(&self.ylabel)
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            top - 10.0,
            esc(&self.title)
        );
    }

    /// The series' colours, right-aligned above the plot.
    fn legend(&self, s: &mut String) {
        let width = |se: &Series| 30.0 + 7.0 * se.name.chars().count() as f64;
        let total: f64 = self.series.iter().map(width).sum();
        let mut lx = WIDTH - RIGHT - total;
        for se in &self.series {
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                self.top - 21.0,
                se.color,
                lx + 16.0,
                self.top - 11.0,
                esc(&se.name)
            );
            lx += width(se);
        }
    }

    /// Group `i`: its bars with whiskers and values, its label and its note.
    fn group(&self, s: &mut String, i: usize, g: &Group, vmax: f64) {
        let group_w = self.group_w();
        let bar_w = (group_w * 0.7) / self.series.len().max(1) as f64;
        let gx = LEFT + group_w * i as f64 + group_w * 0.15;
        for (k, (se, bar)) in self.series.iter().zip(&g.bars).enumerate() {
            let Some(bar) = bar else { continue };
            let at = Slot {
                x: gx + bar_w * k as f64,
                w: bar_w,
                what: format!("{} {}", g.label, se.name),
                color: &se.color,
            };
            self.bar(s, &at, *bar, vmax);
        }
        let cx = LEFT + group_w * (i as f64 + 0.5);
        let bottom = self.top + self.height;
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
            bottom + 16.0,
            esc(&g.label)
        );
        if let Some(note) = &g.note {
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                bottom + 31.0,
                esc(note)
            );
        }
    }

    fn bar(&self, s: &mut String, at: &Slot, b: Bar, vmax: f64) {
        let y = |v: f64| self.y(v, vmax);
        let (bx, bar_w, color) = (at.x, at.w, at.color);
        let v = b.value;
        let _ = writeln!(
            s,
            r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: median {v}</title></rect>"#,
            y(v),
            bar_w - 2.0,
            (self.top + self.height - y(v)).max(0.0),
            esc(&at.what)
        );
        let cx = bx + (bar_w - 2.0) / 2.0;
        if let (Some(lo), Some(hi)) = (b.min, b.max) {
            let (ylo, yhi) = (y(lo), y(hi));
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{ylo:.1}" x2="{cx:.1}" y2="{yhi:.1}" stroke="black"/><line x1="{:.1}" y1="{ylo:.1}" x2="{:.1}" y2="{ylo:.1}" stroke="black"/><line x1="{:.1}" y1="{yhi:.1}" x2="{:.1}" y2="{yhi:.1}" stroke="black"/>"#,
                cx - 4.0,
                cx + 4.0,
                cx - 4.0,
                cx + 4.0,
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
            y(b.max.unwrap_or(v).max(v)) - 4.0,
            trim_num(v)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(27.0), 50.0);
        assert_eq!(nice_ceiling(19.0), 20.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn labels_are_escaped_and_the_svg_is_closed() {
        let chart = Chart {
            title: "a & b".into(),
            subtitle: String::new(),
            footer: String::new(),
            panels: vec![Panel {
                top: 90.0,
                height: 200.0,
                title: "t".into(),
                ylabel: "y".into(),
                series: vec![Series {
                    name: "s".into(),
                    color: "#000".into(),
                }],
                groups: vec![Group {
                    label: "x<y".into(),
                    note: None,
                    bars: vec![Some(Bar {
                        value: 1.5,
                        min: Some(1.0),
                        max: Some(2.0),
                    })],
                }],
            }],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">a &amp; b<") && svg.contains(">x&lt;y<"));
    }
}
