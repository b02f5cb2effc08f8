"""PDFs: open with pypdfium2, render pages one at a time on demand; the --pages parser."""
from __future__ import annotations

import re
from typing import Iterator

from ..errors import InputError, UsageError
from .common import LoadOptions, Media, failures_as_input_error, short_reason
from .images import fit_aspect_ratio

MAX_PAGE_PIXELS = 40_000_000  # a rendered PDF page is scaled down to at most this


class PdfInput:
    """An opened PDF; pages are rendered one at a time, on demand."""

    def __init__(self, source: str, data: bytes, opts: LoadOptions):
        import pypdfium2 as pdfium

        self.source = source
        self.dpi = opts.dpi
        try:
            self._doc = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            # PDFium's last-error code can be stale, so the bytes decide.
            if re.search(rb"/Encrypt\s*\d+\s+\d+\s+R|/Encrypt\s*<<", data):
                raise InputError(source, "the PDF is encrypted with a password (decrypt it first)") from None
            if re.search(rb"/Type\s*/Pages\b", data) and not re.search(rb"/Count\s+[1-9]", data):
                raise InputError(source, "the PDF has no pages") from None
            raise InputError(source, f"not a readable PDF: corrupt or truncated ({_pdfium_reason(exc)})") from None
        except Exception as exc:  # pypdfium2 may raise others for odd input
            raise InputError(source, f"not a readable PDF ({short_reason(exc)})") from None
        try:
            self.page_count = len(self._doc)
        except Exception as exc:
            self._doc.close()
            raise InputError(source, f"not a readable PDF ({short_reason(exc)})") from None
        if self.page_count <= 0:
            self._doc.close()
            raise InputError(source, "the PDF has no pages")
        if opts.pages is None:
            self.page_numbers = list(range(1, self.page_count + 1))
        else:
            outside = [p for p in opts.pages if p > self.page_count]
            if outside:
                self._doc.close()
                raise InputError(
                    source,
                    f"page {outside[0]} is outside the document ({self.page_count} page"
                    f"{'s' if self.page_count != 1 else ''})",
                )
            self.page_numbers = list(opts.pages)

    def render(self, number: int) -> Media:
        """Render one page (1-based); any failure is an InputError naming the page."""
        shown = f"{self.source} page {number}"
        if not 1 <= number <= self.page_count:
            raise InputError(shown, f"outside the document ({self.page_count} pages)")
        page = None
        try:
            with failures_as_input_error(shown, "render the page (try a lower --dpi)", "cannot render the page"):
                page = self._doc[number - 1]
                width_pt, height_pt = page.get_size()
                if not (width_pt >= 1 and height_pt >= 1) or max(width_pt, height_pt) > 1e6:
                    raise InputError(shown, f"the page has no usable size ({width_pt:g} x {height_pt:g} points)")
                scale = self.dpi / 72.0
                pixels = width_pt * height_pt * scale * scale
                if pixels > MAX_PAGE_PIXELS:
                    scale *= (MAX_PAGE_PIXELS / pixels) ** 0.5
                # A thin strip would render less than one pixel across: keep at least one.
                scale = max(scale, 1.0 / min(width_pt, height_pt))
                image = page.render(scale=scale).to_pil().convert("RGB")
        finally:
            if page is not None:
                try:
                    page.close()
                except Exception:
                    pass
        image, notes = fit_aspect_ratio(image)
        return Media(self.source, "pdf-page", image.width, image.height, image=image, page=number, notes=notes)

    def iter_pages(self) -> Iterator[Media]:
        for number in self.page_numbers:
            yield self.render(number)

    def close(self) -> None:
        try:
            self._doc.close()
        except Exception:
            pass


def _pdfium_reason(exc: Exception) -> str:
    match = re.search(r"\(PDFium: ([^)]*)\)", str(exc))
    reason = match.group(1).strip().rstrip(".") if match else short_reason(exc)
    return "unknown error" if reason.lower() in ("success", "") else reason


def parse_pages(spec: str) -> list[int]:
    """'1-3,5' -> [1, 2, 3, 5]; a UsageError for anything else."""
    pages: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise UsageError(f"--pages {spec!r}: expected page numbers like 1-3,5")
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if start < 1 or end < start:
            raise UsageError(f"--pages {spec!r}: pages start at 1 and ranges go upwards")
        if end - start > 100_000:
            raise UsageError(f"--pages {spec!r}: range too large")
        for page in range(start, end + 1):
            if page not in pages:
                pages.append(page)
    return pages
