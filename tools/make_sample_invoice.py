#!/usr/bin/env python3
"""Draw the synthetic 800x600 invoice at test_images/sample.jpg (no external assets).

    python tools/make_sample_invoice.py [OUT.jpg]
"""
from __future__ import annotations

import sys

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else "test_images/sample.jpg"
    draw_invoice().save(out, quality=92)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
