//! QR codes of short URLs, as SVG or PNG. The `qrcode` crate makes the module matrix; both
//! images are drawn here from it: an SVG is one path, and a PNG of black and white modules is a
//! 1-bit greyscale image whose encoding (zlib stream, chunk CRCs) fits in a screen of code,
//! where an image library would add a large dependency tree for one format.

use std::io::Write;

/// Modules of white around the code, as the QR standard asks for scanners to find it.
const QUIET_ZONE: u32 = 4;

/// Smallest and largest image sides accepted, in pixels.
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn parse(raw: &str) -> Option<Format> {
        match raw {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Png => "image/png",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

/// The dark modules of `text`'s QR code, with the side of the square matrix.
fn matrix(text: &str) -> Result<(Vec<bool>, u32), String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    let width = code.width() as u32;
    let dark = code
        .to_colors()
        .into_iter()
        .map(|c| c == qrcode::Color::Dark)
        .collect();
    Ok((dark, width))
}

/// The image of `text`'s QR code, about `size` pixels wide (a PNG is a whole number of pixels
/// per module, so it may come out a little smaller, never below the modules themselves).
pub fn render(text: &str, format: Format, size: u32) -> Result<Vec<u8>, String> {
    let (dark, width) = matrix(text)?;
    let side = width + 2 * QUIET_ZONE;
    match format {
        Format::Svg => Ok(svg(&dark, width, side, size).into_bytes()),
        Format::Png => png(&dark, width, side, (size / side).max(1)),
    }
}

/// A version of the image for `ETag`: the same text, format and size always draw the same image.
pub fn etag(text: &str, format: Format, size: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text
        .bytes()
        .chain(format.name().bytes())
        .chain(size.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"qr-{hash:016x}\"")
}

fn svg(dark: &[bool], width: u32, side: u32, size: u32) -> String {
    let mut path = String::new();
    for (i, _) in dark.iter().enumerate().filter(|(_, d)| **d) {
        let (x, y) = (i as u32 % width + QUIET_ZONE, i as u32 / width + QUIET_ZONE);
        path.push_str(&format!("M{x} {y}h1v1h-1z"));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" \
         viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\"{path}\"/></svg>\n"
    )
}

fn png(dark: &[bool], width: u32, side: u32, scale: u32) -> Result<Vec<u8>, String> {
    let pixels = side * scale;
    let row_bytes = pixels.div_ceil(8) as usize;
    // Each row: filter type 0, then 1 bit per pixel, 1 = white.
    let mut raw = Vec::with_capacity((row_bytes + 1) * pixels as usize);
    for py in 0..pixels {
        raw.push(0);
        let start = raw.len();
        raw.resize(start + row_bytes, 0);
        for px in 0..pixels {
            let (mx, my) = (px / scale, py / scale);
            let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&mx)
                && (QUIET_ZONE..QUIET_ZONE + width).contains(&my);
            let black = inside && dark[((my - QUIET_ZONE) * width + (mx - QUIET_ZONE)) as usize];
            if !black {
                raw[start + (px / 8) as usize] |= 0x80 >> (px % 8);
            }
        }
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&raw).map_err(|e| e.to_string())?;
    let idat = zlib.finish().map_err(|e| e.to_string())?;

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&pixels.to_be_bytes());
    ihdr.extend_from_slice(&pixels.to_be_bytes());
    // Bit depth 1, colour type 0 (greyscale), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_one_path_of_the_size_asked() {
        let svg =
            String::from_utf8(render("http://k.example/abc", Format::Svg, 300).unwrap()).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\""));
        assert_eq!(svg.matches("<path").count(), 1);
    }

    #[test]
    fn png_pixels_are_whole_modules_and_the_etag_follows_the_inputs() {
        let png = render("http://k.example/abc", Format::Png, 256).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let side = u32::from_be_bytes(png[16..20].try_into().unwrap());
        assert!((128..=256).contains(&side), "{side}");
        let a = etag("x", Format::Png, 256);
        assert_eq!(a, etag("x", Format::Png, 256));
        assert_ne!(a, etag("x", Format::Svg, 256));
        assert_ne!(a, etag("x", Format::Png, 257));
        assert_ne!(a, etag("y", Format::Png, 256));
    }
}
