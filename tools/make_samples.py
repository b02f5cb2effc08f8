#!/usr/bin/env python3
"""Make the sample inputs in test_images/ (no external assets):

- sample.jpg: a synthetic 800x600 invoice
- sample.pdf: a two-page PDF (the invoice, then a page of notes)
- sample.mp4: a 3-second video panning over the invoice

    python tools/make_samples.py [OUT_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LINES = [
    ("Widget A (blue)", 2, 19.99),
    ("Widget B (large)", 1, 149.00),
    ("Installation service", 3, 45.50),
    ("Shipping", 1, 12.00),
]


def font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)  # Pillow's bundled font


def draw_invoice() -> Image.Image:
    image = Image.new("RGB", (800, 600), "white")
    d = ImageDraw.Draw(image)
    d.text((40, 30), "INVOICE", font=font(36, True), fill="black")
    d.text((520, 38), "No. INV-2024-0042", font=font(18), fill="black")
    d.text((520, 64), "Date: 2024-03-15", font=font(18), fill="black")
    d.text((40, 100), "Acme Supplies Ltd.", font=font(18, True), fill="black")
    d.text((40, 124), "12 Harbour Road, Bristol BS1 4DJ", font=font(16), fill="black")
    d.text((40, 160), "Bill to: Jane Doe, 7 Elm Street, Leeds LS2 9JT", font=font(16), fill="black")
    top = 210
    d.rectangle((40, top, 760, top + 34), fill=(230, 230, 230), outline="black")
    for x, label in ((50, "Description"), (430, "Qty"), (520, "Unit price"), (660, "Amount")):
        d.text((x, top + 8), label, font=font(16, True), fill="black")
    y = top + 34
    total = 0.0
    for desc, qty, price in LINES:
        amount = qty * price
        total += amount
        d.rectangle((40, y, 760, y + 34), outline="black")
        d.text((50, y + 8), desc, font=font(16), fill="black")
        d.text((440, y + 8), str(qty), font=font(16), fill="black")
        d.text((520, y + 8), f"${price:,.2f}", font=font(16), fill="black")
        d.text((660, y + 8), f"${amount:,.2f}", font=font(16), fill="black")
        y += 34
    tax = round(total * 0.2, 2)
    for label, value in (("Subtotal", total), ("VAT 20%", tax), ("TOTAL DUE", total + tax)):
        y += 12
        bold = label == "TOTAL DUE"
        d.text((500, y), label, font=font(18, bold), fill="black")
        d.text((660, y), f"${value:,.2f}", font=font(18, bold), fill="black")
        y += 18
    d.text((40, 540), "Payment due within 30 days. Thank you for your business!", font=font(15), fill="black")
    return image


def draw_notes() -> Image.Image:
    image = Image.new("RGB", (800, 600), "white")
    d = ImageDraw.Draw(image)
    d.text((40, 40), "Terms and notes", font=font(28, True), fill="black")
    notes = [
        "1. Goods remain the property of Acme Supplies Ltd. until paid in full.",
        "2. Late payments incur interest of 2% per month.",
        "3. Bank: Example Bank, IBAN GB00 EXMP 0000 0000 0000 00.",
        "4. Questions: accounts@acme.example, +44 117 000 0000.",
    ]
    for i, line in enumerate(notes):
        d.text((40, 110 + i * 40), line, font=font(17), fill="black")
    return image


def write_pdf(path: Path) -> None:
    first, second = draw_invoice(), draw_notes()
    first.save(path, "PDF", save_all=True, append_images=[second], resolution=100)


def write_video(path: Path, seconds: int = 3, fps: int = 10, size=(320, 240)) -> None:
    import av
    import numpy as np

    invoice = draw_invoice()
    frames = seconds * fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            left = int((invoice.width - 400) * i / (frames - 1))
            crop = invoice.crop((left, 150, left + 400, 450)).resize(size)
            frame = av.VideoFrame.from_ndarray(np.asarray(crop), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "test_images")
    out.mkdir(parents=True, exist_ok=True)
    draw_invoice().save(out / "sample.jpg", quality=92)
    write_pdf(out / "sample.pdf")
    write_video(out / "sample.mp4")
    for name in ("sample.jpg", "sample.pdf", "sample.mp4"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
