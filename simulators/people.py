"""Residents who wear bracelets, and the relatives to call for them."""

from __future__ import annotations

import random

from simulators.device import Contact, Wearer

SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
ELDER_GIVEN = (
    "秀英",
    "桂英",
    "玉兰",
    "秀兰",
    "凤英",
    "建国",
    "德明",
    "国华",
    "淑珍",
    "志强",
    "文华",
    "永福",
    "素梅",
    "金凤",
    "长海",
    "玉珍",
    "宝山",
    "丽华",
    "振华",
    "桂兰",
)
YOUNG_GIVEN = (
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "磊",
    "洋",
    "艳",
    "勇",
    "军",
    "杰",
    "娟",
    "涛",
    "明",
    "超",
    "霞",
    "平",
    "刚",
    "晨",
    "雪",
)
MOBILE_PREFIXES = ("134", "135", "136", "137", "138", "139", "150", "151", "158", "159", "186",
                   "187", "188", "133", "153", "177", "180", "189")  # fmt: skip


def make_phone(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"


def make_wearer(rng: random.Random, home_lat: float, home_lon: float) -> Wearer:
    surname = rng.choice(SURNAMES)
    # About a third of the elderly in the cases live alone (独居老人).
    lives_alone = rng.random() < 0.35
    contacts = [Contact(surname + rng.choice(YOUNG_GIVEN), make_phone(rng))]
    if rng.random() < 0.5:
        contacts.append(Contact(rng.choice(SURNAMES) + rng.choice(YOUNG_GIVEN), make_phone(rng)))
    return Wearer(
        name=surname + rng.choice(ELDER_GIVEN),
        phone=make_phone(rng),
        home_lat=home_lat,
        home_lon=home_lon,
        safe_radius_m=float(rng.choice((300, 500, 500, 800, 1000))),
        lives_alone=lives_alone,
        emergency_contacts=tuple(contacts),
    )
