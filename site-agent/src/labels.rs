//! Labels that scan: the apheresis bag's, the in-process containers' and the final
//! product bag's, one per manufacturing custody checkpoint of the recipe.
//!
//! A label carries the COI twice in machine form, as a Code 128 barcode and as a
//! DataMatrix symbol, both holding exactly the barcode data the scan field reads
//! ([`Coi::barcode_data`]: `=`, the 13 data characters and the flags, ISBT 128
//! style), and for people: the COI with its check character set apart in a box, the
//! product, the patient's pseudonym, the site, the checkpoint, the date and time of
//! printing in the site's zone, and "FOR AUTOLOGOUS USE ONLY".
//!
//! The symbols are encoded by `rxing` (the Rust port of ZXing), never by hand. One
//! [`Layout`] in printer dots (a 4 x 2 inch label at 203 dpi, the usual bag-label
//! printer) is drawn three ways: PDF (any printer; vector bars, standard fonts), PNG
//! (a preview, and what tests decode), and ZPL for Zebra printers, which draw the
//! symbols with their own `^BC` / `^BX` from the same data.
//!
//! [`print`] records who printed which label when (copy 1, then reprints) before
//! the label is handed out: no label leaves the site unrecorded.

use crate::people::{self, SignedIn};
use crate::store::{self, LocalBatch, Store};
use carrel_proto::coi::Coi;
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::people::SiteAction;
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("the barcode could not be encoded: {0}")]
    Encode(String),
    #[error(transparent)]
    Person(#[from] people::Refused),
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn invalid(text: impl Into<String>) -> Error {
    Error::Invalid(text.into())
}

/// The forms a label is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Png,
    Zpl,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pdf" => Ok(Format::Pdf),
            "png" => Ok(Format::Png),
            "zpl" => Ok(Format::Zpl),
            other => Err(invalid(format!(
                "label format {other:?} is not one of pdf, png, zpl"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Png => "png",
            Format::Zpl => "zpl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Png => "image/png",
            Format::Zpl => "application/vnd.zebra-zpl",
        }
    }
}

/// What a label says.
#[derive(Debug, Clone)]
pub struct Label {
    pub coi: Coi,
    pub product: String,
    pub patient_pseudonym: String,
    pub site_id: String,
    /// The checkpoint's name, as the recipe gives it.
    pub checkpoint: String,
    pub printed_at: DateTime<Utc>,
    pub zone: chrono_tz::Tz,
}

/// The label of `batch` for the manufacturing checkpoint `checkpoint_id`, printed now.
pub fn label_of(
    batch: &LocalBatch,
    checkpoint_id: &str,
    site_id: &str,
    zone: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<Label, Error> {
    let recipe =
        Recipe::from_json(&batch.recipe_json).map_err(|e| invalid(format!("recipe: {e}")))?;
    let manufacturing: Vec<_> = recipe
        .steps
        .iter()
        .filter_map(|s| s.custody_checkpoint.as_ref())
        .collect();
    let Some(checkpoint) = manufacturing.iter().find(|c| c.id == checkpoint_id) else {
        let known: Vec<&str> = manufacturing.iter().map(|c| c.id.as_str()).collect();
        let bedside = recipe
            .bedside_checkpoints
            .iter()
            .any(|c| c.id == checkpoint_id);
        return Err(invalid(if bedside {
            format!(
                "{checkpoint_id} is at the bedside, where the final product bag's label is scanned; labels are printed for {}",
                known.join(", ")
            )
        } else {
            format!(
                "the recipe has no checkpoint {checkpoint_id:?}; labels are printed for {}",
                known.join(", ")
            )
        }));
    };
    Ok(Label {
        coi: Coi::parse(&batch.coi).map_err(|e| invalid(format!("the batch's COI: {e}")))?,
        product: recipe.title.clone(),
        patient_pseudonym: batch.patient_pseudonym.clone(),
        site_id: site_id.to_owned(),
        checkpoint: checkpoint.name.clone(),
        printed_at: now,
        zone,
    })
}

/// Records that `by` printed this label of `batch` (copy 1, or the reprint after the
/// copies already recorded), then renders it. The record comes first: a label that
/// could not be recorded is not printed.
pub async fn print(
    store: &Store,
    batch: &LocalBatch,
    checkpoint_id: &str,
    label: &Label,
    format: Format,
    by: &SignedIn,
) -> Result<(SiteEvent, Vec<u8>), Error> {
    people::authorize(by, SiteAction::LabelPrint)?;
    if batch.state == store::BatchState::Cancelled {
        return Err(invalid(format!(
            "batch {} is cancelled; no label is printed for it",
            batch.batch_id
        )));
    }
    // Render first so that a label that cannot be drawn is never recorded as printed.
    let bytes = label.render(format)?;
    let copies = store
        .batch_events(batch.batch_id)
        .await?
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::LabelPrinted { checkpoint_id: c, .. } if c == checkpoint_id)
        })
        .count() as u32;
    let event = store
        .append(
            batch.batch_id,
            &by.by(),
            EventKind::LabelPrinted {
                checkpoint_id: checkpoint_id.to_owned(),
                format: format.as_str().to_owned(),
                copy: copies + 1,
                barcode_data: label.coi.barcode_data(),
            },
        )
        .await?;
    Ok((event, bytes))
}

/// Printer dots per inch of the layout (the usual thermal bag-label printer).
const DPI: u32 = 203;
/// The label: 4 x 2 inches.
const WIDTH: u32 = 812;
const HEIGHT: u32 = 406;

/// One thing on the label, in dots from the top left.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// Text whose capital letters are `height` dots tall.
    Text {
        x: u32,
        y: u32,
        height: u32,
        bold: bool,
        text: String,
    },
    /// A rectangle's outline.
    Frame { x: u32, y: u32, w: u32, h: u32 },
    /// A Code 128 symbol of `modules` (dark = true), `module` dots per module.
    Code128 {
        x: u32,
        y: u32,
        module: u32,
        height: u32,
        data: String,
        modules: Vec<bool>,
    },
    /// A DataMatrix symbol, rows from the top, `module` dots per module.
    DataMatrix {
        x: u32,
        y: u32,
        module: u32,
        data: String,
        rows: Vec<Vec<bool>>,
    },
}

/// Where everything goes on the label.
#[derive(Debug, Clone)]
struct Layout {
    items: Vec<Item>,
}

/// Code 128 modules of `data` (no quiet zone; the layout leaves 10 modules each side).
fn code128(data: &str) -> Result<Vec<bool>, Error> {
    use rxing::oned::{Code128Writer, OneDimensionalCodeWriter};
    Code128Writer
        .encode_oned(data)
        .map_err(|e| Error::Encode(e.to_string()))
}

/// A square DataMatrix (ECC 200) of `data`, rows from the top.
fn datamatrix(data: &str) -> Result<Vec<Vec<bool>>, Error> {
    use rxing::{BarcodeFormat, EncodeHintValue, EncodeHints, MultiFormatWriter, Writer};
    let square = EncodeHints::default().with(EncodeHintValue::DataMatrixShape(
        rxing::datamatrix::encoder::SymbolShapeHint::FORCE_SQUARE,
    ));
    let matrix = MultiFormatWriter
        .encode_with_hints(data, &BarcodeFormat::DATA_MATRIX, 0, 0, &square)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok((0..matrix.getHeight())
        .map(|y| (0..matrix.getWidth()).map(|x| matrix.get(x, y)).collect())
        .collect())
}

/// The runs of dark modules in a row: (first module, how many). One rectangle per run
/// leaves no hairline seams between neighbouring modules on screen.
fn dark_runs(row: &[bool]) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < row.len() {
        if row[i] {
            let start = i;
            while i < row.len() && row[i] {
                i += 1;
            }
            runs.push((start as u32, (i - start) as u32));
        } else {
            i += 1;
        }
    }
    runs
}

/// Text as a label may print it: printable ASCII (the fonts of all three forms have
/// it; anything else becomes `?`).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

impl Label {
    /// The data both symbols carry: what the scan field reads.
    pub fn barcode_data(&self) -> String {
        self.coi.barcode_data()
    }

    fn layout(&self) -> Result<Layout, Error> {
        let data = self.barcode_data();
        let bars = code128(&data)?;
        let matrix = datamatrix(&data)?;
        let eye = self.coi.eye_readable();
        // "G1234 26 000042 N": the check character is printed apart, in a box.
        let (body, check) = eye.rsplit_once(' ').unwrap_or((eye.as_str(), ""));
        let local = self.printed_at.with_timezone(&self.zone);
        let text = |x, y, height, bold, text: &str| Item::Text {
            x,
            y,
            height,
            bold,
            text: printable(text),
        };
        // Text cut to the label's width: the widest of the three forms' fonts (the
        // PNG's bitmap font) is 8 dots per 8 of height.
        let fit = |height: u32, text: &str| {
            let room = ((WIDTH - 48) / (height / 8 * 8).max(8)) as usize;
            let text = printable(text);
            if text.len() <= room {
                text
            } else {
                format!("{}...", &text[..room.saturating_sub(3)])
            }
        };
        let module = 2;
        let dm_module = 7;
        let dm_size = matrix.len() as u32 * dm_module;
        let mut items = vec![
            text(24, 18, 26, true, "FOR AUTOLOGOUS USE ONLY"),
            text(24, 56, 18, false, &fit(18, &self.product)),
            text(24, 92, 30, true, body),
            Item::Frame {
                x: 440,
                y: 84,
                w: 40,
                h: 46,
            },
            text(448, 92, 30, true, check),
            Item::Code128 {
                x: 24,
                y: 146,
                module,
                height: 110,
                data: data.clone(),
                modules: bars,
            },
            text(24 + 10 * module, 264, 16, false, &data),
            Item::DataMatrix {
                x: WIDTH - 30 - dm_size,
                y: 146,
                module: dm_module,
                data,
                rows: matrix,
            },
            text(
                24,
                300,
                18,
                false,
                &fit(
                    18,
                    &format!("Patient {}   Site {}", self.patient_pseudonym, self.site_id),
                ),
            ),
            text(24, 330, 18, false, &fit(18, &self.checkpoint)),
            text(
                24,
                360,
                18,
                false,
                &format!("Printed {}", local.format("%Y-%m-%d %H:%M %Z")),
            ),
        ];
        // The Code 128 starts after its quiet zone.
        if let Some(Item::Code128 { x, .. }) = items.get_mut(5) {
            *x += 10 * module;
        }
        Ok(Layout { items })
    }

    /// The label in `format`.
    pub fn render(&self, format: Format) -> Result<Vec<u8>, Error> {
        let layout = self.layout()?;
        Ok(match format {
            Format::Pdf => layout.pdf(),
            Format::Png => layout.png()?,
            Format::Zpl => layout.zpl().into_bytes(),
        })
    }
}

impl Layout {
    /// ZPL II: text in the printer's scalable font, the symbols drawn by the printer
    /// from the same data (`^BC` in automatic subset mode, `^BX` at quality 200).
    fn zpl(&self) -> String {
        // Field data: printable ASCII, with `^`, `~` and `_` (the ^FH indicator) as hex.
        let field = |text: &str| {
            let mut out = String::new();
            for c in printable(text).chars() {
                match c {
                    '^' | '~' | '_' | '\\' => out.push_str(&format!("_{:02X}", c as u32)),
                    c => out.push(c),
                }
            }
            out
        };
        let mut zpl = format!("^XA\n^CI28\n^PW{WIDTH}\n^LL{HEIGHT}\n^LH0,0\n");
        for item in &self.items {
            match item {
                Item::Text {
                    x, y, height, text, ..
                } => zpl.push_str(&format!(
                    "^FO{x},{y}^A0N,{height},{height}^FH^FD{}^FS\n",
                    field(text)
                )),
                Item::Frame { x, y, w, h } => {
                    zpl.push_str(&format!("^FO{x},{y}^GB{w},{h},2^FS\n"));
                }
                Item::Code128 {
                    x,
                    y,
                    module,
                    height,
                    data,
                    ..
                } => {
                    // `>` is Code 128's escape in ^BC: a literal one is `>0`.
                    let data = field(data).replace('>', ">0");
                    zpl.push_str(&format!(
                        "^FO{x},{y}^BY{module}^BCN,{height},N,N,N,A^FD{data}^FS\n"
                    ));
                }
                Item::DataMatrix {
                    x, y, module, data, ..
                } => zpl.push_str(&format!(
                    "^FO{x},{y}^BXN,{module},200,,,,,1^FH^FD{}^FS\n",
                    field(data)
                )),
            }
        }
        zpl.push_str("^XZ\n");
        zpl
    }

    /// A grey-scale PNG at the printer's resolution: the symbols module by module,
    /// the text in an 8 x 8 bitmap font scaled to its height.
    fn png(&self) -> Result<Vec<u8>, Error> {
        let (w, h) = (WIDTH as usize, HEIGHT as usize);
        let mut pixels = vec![255u8; w * h];
        let mut fill = |x0: u32, y0: u32, fw: u32, fh: u32| {
            for y in y0..(y0 + fh).min(HEIGHT) {
                for x in x0..(x0 + fw).min(WIDTH) {
                    pixels[y as usize * w + x as usize] = 0;
                }
            }
        };
        for item in &self.items {
            match item {
                Item::Text {
                    x,
                    y,
                    height,
                    bold,
                    text,
                } => {
                    use font8x8::UnicodeFonts;
                    let scale = (height / 8).max(1);
                    for (i, c) in text.chars().enumerate() {
                        let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
                            continue;
                        };
                        let cx = x + i as u32 * 8 * scale;
                        for (row, bits) in glyph.iter().enumerate() {
                            for col in 0..8u32 {
                                if bits & (1 << col) != 0 {
                                    let px = cx + col * scale;
                                    let py = y + row as u32 * scale;
                                    fill(px, py, scale + u32::from(*bold), scale);
                                }
                            }
                        }
                    }
                }
                Item::Frame { x, y, w: fw, h: fh } => {
                    fill(*x, *y, *fw, 2);
                    fill(*x, y + fh - 2, *fw, 2);
                    fill(*x, *y, 2, *fh);
                    fill(x + fw - 2, *y, 2, *fh);
                }
                Item::Code128 {
                    x,
                    y,
                    module,
                    height,
                    modules,
                    ..
                } => {
                    for (i, dark) in modules.iter().enumerate() {
                        if *dark {
                            fill(x + i as u32 * module, *y, *module, *height);
                        }
                    }
                }
                Item::DataMatrix {
                    x, y, module, rows, ..
                } => {
                    for (r, row) in rows.iter().enumerate() {
                        for (c, dark) in row.iter().enumerate() {
                            if *dark {
                                fill(
                                    x + c as u32 * module,
                                    y + r as u32 * module,
                                    *module,
                                    *module,
                                );
                            }
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let dpm = (f64::from(DPI) / 0.0254).round() as u32;
        encoder.set_pixel_dims(Some(png::PixelDimensions {
            xppu: dpm,
            yppu: dpm,
            unit: png::Unit::Meter,
        }));
        let mut writer = encoder
            .write_header()
            .map_err(|e| Error::Encode(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| Error::Encode(e.to_string()))?;
        writer.finish().map_err(|e| Error::Encode(e.to_string()))?;
        Ok(out)
    }

    /// A one-page PDF the label's size: Helvetica for the text, the symbols as
    /// filled rectangles (one per run of dark modules).
    fn pdf(&self) -> Vec<u8> {
        use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
        let pt = |dots: u32| dots as f32 * 72.0 / DPI as f32;
        let page_h = pt(HEIGHT);
        let mut content = Content::new();
        for item in &self.items {
            match item {
                Item::Text {
                    x,
                    y,
                    height,
                    bold,
                    text,
                } => {
                    // Capital letters are about 0.72 em tall in Helvetica.
                    let size = pt(*height) / 0.72;
                    content.begin_text();
                    content.set_font(Name(if *bold { b"F2" } else { b"F1" }), size);
                    content.next_line(pt(*x), page_h - pt(y + height));
                    content.show(Str(text.as_bytes()));
                    content.end_text();
                }
                Item::Frame { x, y, w, h } => {
                    content.set_line_width(pt(2));
                    content.rect(pt(*x), page_h - pt(y + h), pt(*w), pt(*h));
                    content.stroke();
                }
                Item::Code128 {
                    x,
                    y,
                    module,
                    height,
                    modules,
                    ..
                } => {
                    for (start, len) in dark_runs(modules) {
                        content.rect(
                            pt(x + start * module),
                            page_h - pt(y + height),
                            pt(len * module),
                            pt(*height),
                        );
                    }
                    content.fill_nonzero();
                }
                Item::DataMatrix {
                    x, y, module, rows, ..
                } => {
                    for (r, row) in rows.iter().enumerate() {
                        for (start, len) in dark_runs(row) {
                            content.rect(
                                pt(x + start * module),
                                page_h - pt(y + (r as u32 + 1) * module),
                                pt(len * module),
                                pt(*module),
                            );
                        }
                    }
                    content.fill_nonzero();
                }
            }
        }
        let (catalog, tree, page, contents, regular, bold) = (
            Ref::new(1),
            Ref::new(2),
            Ref::new(3),
            Ref::new(4),
            Ref::new(5),
            Ref::new(6),
        );
        let mut pdf = Pdf::new();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree).kids([page]).count(1);
        let mut p = pdf.page(page);
        p.parent(tree)
            .media_box(Rect::new(0.0, 0.0, pt(WIDTH), page_h))
            .contents(contents);
        p.resources()
            .fonts()
            .pair(Name(b"F1"), regular)
            .pair(Name(b"F2"), bold);
        p.finish();
        pdf.type1_font(regular)
            .base_font(Name(b"Helvetica"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.type1_font(bold)
            .base_font(Name(b"Helvetica-Bold"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.stream(contents, content.finish().as_slice());
        pdf.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label {
        Label {
            coi: Coi::new("G1234", 2026, 42).expect("coi"),
            product: "Autologous CD19 CAR-T".into(),
            patient_pseudonym: "P-1001".into(),
            site_id: "site-a".into(),
            checkpoint: "Fill and final label".into(),
            printed_at: DateTime::parse_from_rfc3339("2027-03-28T07:30:00Z")
                .expect("time")
                .with_timezone(&Utc),
            zone: chrono_tz::Europe::London,
        }
    }

    #[test]
    fn a_label_carries_the_coi_in_both_symbols_and_in_words() {
        let label = label();
        let data = label.barcode_data();
        assert_eq!(data, "=G12342600004200");
        let zpl = String::from_utf8(label.render(Format::Zpl).expect("zpl")).expect("text");
        assert!(zpl.starts_with("^XA") && zpl.trim_end().ends_with("^XZ"));
        assert!(
            zpl.contains(&format!("^BCN,110,N,N,N,A^FD{data}^FS")),
            "{zpl}"
        );
        assert!(
            zpl.contains(&format!("^BXN,7,200,,,,,1^FH^FD{data}^FS")),
            "{zpl}"
        );
        assert!(zpl.contains("FOR AUTOLOGOUS USE ONLY"));
        assert!(zpl.contains("Printed 2027-03-28 08:30 BST"), "{zpl}");
        // The check character is set apart from the rest of the COI.
        assert!(zpl.contains("^FDG1234 26 000042^FS"), "{zpl}");
        let pdf = label.render(Format::Pdf).expect("pdf");
        assert!(pdf.starts_with(b"%PDF-"));
        let png = label.render(Format::Png).expect("png");
        assert!(png.starts_with(b"\x89PNG"));
        // Code 128: start, data, check and stop symbols, and nothing but printable data.
        let bars = code128(&data).expect("code 128");
        assert_eq!((bars.len() - 13) % 11, 0, "{} modules", bars.len());
        let text = |s: &str| printable(s);
        assert_eq!(text("Müller ^x"), "M?ller ^x");
    }

    #[test]
    fn field_data_cannot_inject_zpl_commands() {
        let mut label = label();
        label.patient_pseudonym = "P-1^XZ~JR_".into();
        let zpl = String::from_utf8(label.render(Format::Zpl).expect("zpl")).expect("text");
        assert!(zpl.contains("P-1_5EXZ_7EJR_5F"), "{zpl}");
        assert_eq!(zpl.matches("^XZ").count(), 1, "{zpl}");
    }

    #[test]
    fn formats_parse_and_unknown_ones_say_which_exist() {
        assert_eq!(Format::parse("PDF").expect("pdf"), Format::Pdf);
        let err = Format::parse("bmp").expect_err("refused").to_string();
        assert!(err.contains("pdf, png, zpl"), "{err}");
    }
}
