"""The embedded synthetic demo corpus (DESIGN.md section 4, "The embedded demo corpus").

The pipeline must show real learning with no download, in minutes on a CPU. So the images
are coloured shapes whose attributes (shape, colour, background, position, size, count) are
all readable at 32 px, and every caption names all of them through varied templates and
synonyms: a model cannot match texts to images without learning each attribute, and an
untrained one sits at chance. Everything is written in the real corpus formats (see
`r2d2.data.formats`) so the demo exercises the same code paths as a real download.

Evaluation images use attribute combinations that never occur in training (compositional
generalisation, no leakage) and are unique among themselves, so exact-image R@1 is not
capped by duplicates. They come in pairs that differ in one or two attributes: these give
the hard negatives of the matching split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from r2d2.config import DemoDataConfig
from r2d2.data import formats
from r2d2.errors import UserError

FORMAT_VERSION = 1
SUPERSAMPLE = 4  # draw at 4x then box-filter down: anti-aliased edges keep small stars legible

SHAPES: dict[str, tuple[str, ...]] = {  # canonical name -> synonyms used in texts
    "圆形": ("圆形", "圆圈", "圆"),
    "正方形": ("正方形", "方块", "方形"),
    "三角形": ("三角形", "三角"),
    "星形": ("星形", "星星", "五角星"),
    "十字": ("十字", "十字形", "加号"),
    "菱形": ("菱形", "菱形块"),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "红色": (220, 30, 30), "橙色": (255, 140, 0), "黄色": (250, 220, 20), "绿色": (30, 170, 50),
    "蓝色": (30, 80, 230), "紫色": (140, 50, 190), "黑色": (15, 15, 15), "白色": (245, 245, 245),
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {"橙色": ("橙色", "橘色")}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "白色": (245, 245, 245), "黑色": (15, 15, 15), "灰色": (128, 128, 128),
    "黄色": (250, 220, 20), "蓝色": (30, 80, 230), "绿色": (30, 170, 50),
}
POSITIONS: dict[str, tuple[str, ...]] = {
    "左上角": ("左上角", "左上方", "左上部"), "右上角": ("右上角", "右上方", "右上部"),
    "左下角": ("左下角", "左下方", "左下部"), "右下角": ("右下角", "右下方", "右下部"),
    "中间": ("中间", "正中间", "中央", "正中央"),
}
SIZES: dict[str, tuple[str, ...]] = {"大": ("大的", "较大的", "很大的"), "小": ("小的", "较小的", "小小的")}
COUNTS: dict[int, tuple[str, ...]] = {1: ("一个", "单个", "1个"), 2: ("两个", "2个", "一对"), 3: ("三个", "3个")}
ATTRS = ("shape", "colour", "background", "position", "size", "count")
MIN_CONTRAST = 100.0  # RGB distance; drops e.g. orange on yellow, which is unreadable at 32 px

# Whole-caption templates; {obj} is "count + size + colour + shape" in one of two word orders.
CAPTION_TEMPLATES = (
    "{bg}背景上，{pos}有{obj}",
    "{obj}位于图片的{pos}，背景是{bg}",
    "在{bg}的背景中，{obj}出现在{pos}",
    "{bgs}底图片，{pos}画着{obj}",
    "一张{bg}背景的图片，{pos}是{obj}",
    "图中{pos}有{obj}，背景为{bg}",
    "{obj}在{pos}，{bg}背景",
    "画面的{pos}有{obj}，底色是{bg}",
    "{bg}背景下{pos}的{obj}",
    "这是一张{bgs}底的图，{obj}位于{pos}",
)
# Short search queries: each names only some attributes (listed), like a click query.
QUERY_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("{col}{shape}", ("colour", "shape")),
    ("{bgs}底{shape}", ("background", "shape")),
    ("{pos}的{shape}", ("position", "shape")),
    ("{cnt}{col}{shape}", ("count", "colour", "shape")),
    ("{col}{sz}{shape}", ("colour", "size", "shape")),
    ("{bgs}底{col}{shape}", ("background", "colour", "shape")),
    ("{col}{shape} {bg}背景", ("colour", "shape", "background")),
)


@dataclass(frozen=True, order=True)
class Combo:
    """One attribute combination; count > 1 always uses small shapes (they must fit around the position)."""

    shape: str
    colour: str
    background: str
    position: str
    size: str
    count: int

    def valid(self) -> bool:
        fg, bg = COLOURS[self.colour], BACKGROUNDS[self.background]
        contrast = sum((a - b) ** 2 for a, b in zip(fg, bg, strict=True)) ** 0.5
        return self.colour != self.background and contrast >= MIN_CONTRAST and (self.count == 1 or self.size == "小")

    def keywords(self) -> list[str]:
        return [self.colour, self.shape, f"{self.background}背景", self.position, self.size, COUNTS[self.count][0]]


VOCAB: dict[str, list[Any]] = {
    "shape": list(SHAPES), "colour": list(COLOURS), "background": list(BACKGROUNDS),
    "position": list(POSITIONS), "size": list(SIZES), "count": list(COUNTS),
}


def all_combos() -> list[Combo]:
    """Every valid combination, in a fixed order (the sampling frame for both splits)."""
    return [c for c in itertools.starmap(Combo, itertools.product(*VOCAB.values())) if c.valid()]


# --- texts -------------------------------------------------------------------------------------


def _object_phrase(c: Combo, rng: random.Random) -> str:
    cnt, col = rng.choice(COUNTS[c.count]), rng.choice(COLOUR_SYNONYMS.get(c.colour, (c.colour,)))
    shape = rng.choice(SHAPES[c.shape])
    if rng.random() < 0.5:  # 一个大的红色圆形 (never 大红色: that reads as "crimson")
        return f"{cnt}{rng.choice(SIZES[c.size])}{col}{shape}"
    return f"{cnt}{col}的{c.size}{shape}"  # 一个红色的大圆形


def caption(c: Combo, rng: random.Random, template: str | None = None) -> str:
    """A full caption naming all six attributes, with a random template and synonyms."""
    template = template or rng.choice(CAPTION_TEMPLATES)
    return template.format(obj=_object_phrase(c, rng), pos=rng.choice(POSITIONS[c.position]),
                           bg=c.background, bgs=c.background[0])


def captions(c: Combo, n: int, rng: random.Random) -> list[str]:
    """n distinct captions from distinct templates (templates repeat only when n exceeds them)."""
    order = rng.sample(CAPTION_TEMPLATES, len(CAPTION_TEMPLATES))
    out: list[str] = []
    for i in range(n):
        text = caption(c, rng, order[i % len(order)])
        for _ in range(10):
            if text not in out:
                break
            text = caption(c, rng, order[i % len(order)])
        out.append(text)
    return out


def query(c: Combo, rng: random.Random) -> tuple[str, list[str]]:
    """A short search query that names only some attributes; returns (text, attributes named)."""
    template, attrs = rng.choice(QUERY_TEMPLATES)
    text = template.format(col=c.colour, shape=rng.choice(SHAPES[c.shape]), bgs=c.background[0],
                           bg=c.background, pos=c.position, cnt=COUNTS[c.count][0], sz=c.size)
    return text, list(attrs)


# --- images ------------------------------------------------------------------------------------

# Multi-shape arrangements, in units of (shape + gap); the group is placed like one shape.
LAYOUTS: dict[int, tuple[tuple[tuple[float, float], ...], ...]] = {
    2: (((0, 0), (1, 1)), ((1, 0), (0, 1))),  # diagonals only: a square group reads as a corner
    3: (((0, 0), (1, 0), (0.5, 1)), ((0.5, 0), (0, 1), (1, 1)), ((0, 0), (1, 0), (0, 1)), ((0, 0), (0, 1), (1, 1))),
}


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """Vary brightness (+-10) more than hue (+-4): per-channel noise would tint white pink or cyan."""
    shift = rng.randint(-10, 10)
    r, g, b = (min(255, max(0, v + shift + rng.randint(-4, 4))) for v in rgb)
    return r, g, b


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, x0: float, y0: float, s: float, fill: tuple[int, int, int]) -> None:
    x1, y1, cx, cy = x0 + s, y0 + s, x0 + s / 2, y0 + s / 2
    if shape == "圆形":
        d.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "正方形":
        m = 0.07 * s  # a square covers more area than a circle of the same box
        d.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=fill)
    elif shape == "三角形":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "星形":
        pts = []
        for k in range(10):  # fat (inner/outer 0.5) and slightly oversized so it survives 32 px
            r = 0.56 * s if k % 2 == 0 else 0.28 * s
            a = math.radians(-90 + 36 * k)
            pts.append((cx + r * math.cos(a), cy + 0.06 * s + r * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == "十字":
        w = s / 3
        d.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=fill)
        d.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)
    elif shape == "菱形":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:  # pragma: no cover - VOCAB and this function are edited together
        raise ValueError(f"unknown shape {shape!r}")


def _place(position: str, w: float, h: float, side: float, rng: random.Random) -> tuple[float, float]:
    """Top-left corner of a w x h box at a named position, with a little jitter, kept inside the image."""
    m, j = 0.04 * side, 0.03 * side
    x = {"左": m, "右": side - m - w}.get(position[0], (side - w) / 2)
    y = {"上": m, "下": side - m - h}.get(position[1], (side - h) / 2)
    x += rng.uniform(-j, j)
    y += rng.uniform(-j, j)
    return min(max(x, 0.0), side - w), min(max(y, 0.0), side - h)


def render(c: Combo, image_size: int, rng: random.Random) -> Image.Image:
    """Draw one image. Sizes are fractions of the side: large 60-66 %, small 34-40 %, groups of 30-33 %."""
    side = image_size * SUPERSAMPLE
    fill = _jitter(COLOURS[c.colour], rng)
    img = Image.new("RGB", (side, side), _jitter(BACKGROUNDS[c.background], rng))
    d = ImageDraw.Draw(img)
    if c.count == 1:
        s = side * (rng.uniform(0.60, 0.66) if c.size == "大" else rng.uniform(0.34, 0.40))
        boxes = [_place(c.position, s, s, side, rng)]
    else:
        s, gap = side * rng.uniform(0.30, 0.33), side * 0.05
        layout = rng.choice(LAYOUTS[c.count])
        w = s + (s + gap) * max(u for u, _ in layout)
        h = s + (s + gap) * max(v for _, v in layout)
        gx, gy = _place(c.position, w, h, side, rng)
        boxes = [(gx + u * (s + gap), gy + v * (s + gap)) for u, v in layout]
    for x0, y0 in boxes:
        _draw_shape(d, c.shape, x0, y0, s, fill)
    return img.reduce(SUPERSAMPLE)


# --- splits ------------------------------------------------------------------------------------


def eval_combos(n: int, frame: list[Combo], rng: random.Random) -> list[Combo]:
    """n unique combos in consecutive pairs whose members differ in 1-2 attributes (hard negatives)."""
    if n > len(frame) // 2:
        raise UserError(f"demo_data.eval_images={n} is too many: at most {len(frame) // 2} unique combinations")
    valid, used, out = set(frame), set(), []
    while len(out) < n:
        base = rng.choice(frame)
        if base in used:
            continue
        used.add(base)
        out.append(base)
        if len(out) == n:
            break
        for _ in range(100):
            changes = {a: rng.choice(VOCAB[a]) for a in rng.sample(ATTRS, rng.choice((1, 2)))}
            other = replace(base, **changes)
            if other != base and other in valid and other not in used:
                used.add(other)
                out.append(other)
                break
        else:  # a combo with no free neighbour: drop it and draw again
            out.pop()
    return out


def matching_train_rows(train: list[dict[str, Any]], rel: Any, valid: set[Combo], rng: random.Random) -> list[dict[str, Any]]:
    """Labelled pairs for matching fine-tuning: each train image with one of its captions (1) and a
    caption of a combination that differs in 1-2 attributes (0), so the task needs the image."""
    rows = []
    for s in train:
        combo = Combo(*(s[a] for a in ATTRS))
        rows.append({"text": s["captions"][0], "image_path": rel(s), "label": 1})
        for _ in range(100):
            changes = {a: rng.choice(VOCAB[a]) for a in rng.sample(ATTRS, rng.choice((1, 2)))}
            other = replace(combo, **changes)
            if other != combo and other in valid:
                rows.append({"text": caption(other, rng), "image_path": rel(s), "label": 0})
                break
    rng.shuffle(rows)
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare(out_dir: Path) -> None:
    """Refuse to write into an unrelated non-empty folder; clear a previous demo corpus (no stale images)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "demo_info.json").exists():
            raise UserError(f"{out_dir} is not empty and holds no demo corpus (demo_info.json); choose an empty folder")
        for name in ("images", "zero", "wukong", "train", "eval"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)


def generate_demo_corpus(out_dir: Path, cfg: DemoDataConfig) -> dict[str, Any]:
    """Write the demo corpus under out_dir (layout in the module docs of r2d2.commands.demo_data); return demo_info.

    Each part draws from its own seeded stream, so the eval split does not change with the
    number of training images, and the same config always gives byte-identical files.
    """
    out_dir = Path(out_dir)
    _prepare(out_dir)

    def stream(name: str) -> random.Random:
        return random.Random(f"r2d2-demo/{cfg.seed}/{name}")

    frame = all_combos()
    ev = eval_combos(cfg.eval_images, frame, stream("eval-combos"))
    held_out = set(ev)
    train_frame = [c for c in frame if c not in held_out]
    rng_train = stream("train-combos")
    tr = [rng_train.choice(train_frame) for _ in range(cfg.train_images)]

    samples: list[dict[str, Any]] = []
    for split, combos in (("train", tr), ("eval", ev)):
        rng_img, rng_txt = stream(f"{split}-images"), stream(f"{split}-texts")
        for i, c in enumerate(combos):
            key = f"demo-{split}-{i:06d}"
            data = formats.encode_png(render(c, cfg.image_size, rng_img))
            (out_dir / "images" / f"{key}.png").write_bytes(data)
            q, q_attrs = query(c, rng_txt)
            samples.append({"image_key": key, "image_id": len(samples), "split": split, **asdict(c),
                            "captions": captions(c, cfg.captions_per_image, rng_txt), "query": q,
                            "query_attrs": q_attrs, "_png": data})
    train = [s for s in samples if s["split"] == "train"]
    evals = [s for s in samples if s["split"] == "eval"]

    def rel(s: dict[str, Any]) -> str:
        return f"images/{s['image_key']}.png"

    formats.write_zero_json(out_dir / "zero" / "zero_demo.json", (
        {"Url": f"https://demo.invalid/page/{s['image_key']}", "Title": s["captions"][0],
         "Content": s["captions"][1 % len(s["captions"])], "Keywords": ",".join(Combo(*(s[a] for a in ATTRS)).keywords()),
         "ImageKey": s["image_key"], "ImageUrl": rel(s), "ImageQuery": s["query"]} for s in train))
    half = (len(train) + 1) // 2
    for part, chunk in enumerate((train[:half], train[half:])):
        formats.write_wukong_csv(out_dir / "wukong" / f"wukong_100m_{part}.csv",
                                 ((rel(s), cap) for s in chunk for cap in s["captions"]))

    train_texts = [t for s in train for t in [*s["captions"], s["query"]]]
    train_owner = [s["image_id"] for s in train for _ in range(len(s["captions"]) + 1)]
    formats.write_cnclip_split(out_dir / "train", "train", ((s["image_id"], s["_png"]) for s in train),
                               ({"text_id": i, "text": t, "image_ids": [o]}
                                for i, (t, o) in enumerate(zip(train_texts, train_owner, strict=True))))
    formats.write_cnclip_split(out_dir / "eval" / "retrieval", "valid", ((s["image_id"], s["_png"]) for s in evals),
                               ({"text_id": i, "text": s["captions"][0], "image_ids": [s["image_id"]]}
                                for i, s in enumerate(evals)))

    rng_match, rows = stream("matching"), []
    for i, s in enumerate(evals):
        partner = i ^ 1  # eval combos come in near-duplicate pairs
        if partner >= len(evals) or rng_match.random() >= 0.75:  # a quarter random negatives
            partner = rng_match.choice([j for j in range(len(evals)) if j != i]) if len(evals) > 1 else None
        rows.append({"text": s["captions"][1 % len(s["captions"])], "image_path": rel(s), "label": 1})
        if partner is not None:
            rows.append({"text": evals[partner]["captions"][-1], "image_path": rel(s), "label": 0})
    rng_match.shuffle(rows)
    formats.write_icm_jsonl(out_dir / "eval" / "matching" / "valid.jsonl", rows)
    train_rows = matching_train_rows(train, rel, set(frame), stream("matching-train"))
    formats.write_icm_jsonl(out_dir / "eval" / "matching" / "train.jsonl", train_rows)
    formats.write_jsonl(out_dir / "attributes.jsonl", ({k: v for k, v in s.items() if k != "_png"} for s in samples))

    # Images are hashed from memory: re-opening thousands of small files doubles the run time.
    hashes = {f"images/{s['image_key']}.png": hashlib.sha256(s["_png"]).hexdigest() for s in samples}
    for p in out_dir.rglob("*"):
        rel_path = p.relative_to(out_dir).as_posix()
        if p.is_file() and p.name != "demo_info.json" and rel_path not in hashes:
            hashes[rel_path] = _sha256(p)
    n_eval = len(evals)
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "seed": cfg.seed, "image_size": cfg.image_size, "captions_per_image": cfg.captions_per_image,
        "counts": {"train_images": len(train), "eval_images": n_eval, "train_texts": len(train_texts),
                   "valid_texts": n_eval, "matching_rows": len(rows), "matching_train_rows": len(train_rows),
                   "matching_positive": sum(r["label"] for r in rows), "zero_records": len(train),
                   "wukong_rows": [half * cfg.captions_per_image, (len(train) - half) * cfg.captions_per_image],
                   "combinations": len(frame), "distinct_train_combinations": len(set(tr))},
        "eval_combos_in_train": len(held_out & set(tr)),
        "vocab": VOCAB,
        "synonyms": {"shape": SHAPES, "position": POSITIONS, "size": SIZES, "colour": COLOUR_SYNONYMS},
        "chance": {"retrieval_r1": 1 / n_eval, "retrieval_r5": min(1.0, 5 / n_eval),
                   "retrieval_r10": min(1.0, 10 / n_eval), "matching_auc": 0.5,
                   **{f"{a}_top1": 1 / len(VOCAB[a]) for a in ATTRS}},
        "image_key": {str(s["image_id"]): s["image_key"] for s in samples},
        "files": dict(sorted(hashes.items())),
    }
    (out_dir / "demo_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return info
