"""A realistic synthetic export set, for the quick start, the tests and the benchmarks.

Shapes and vocabulary are the national platform's; people and institutions are invented.
A handful of fixed scenario rows (``SCENARIOS``) come first so the README example and the
end-to-end tests can name a suspended or a multi-site doctor; the rest is a seeded random
population with the statuses real exports carry: suspensions of 3 or 6 months (001 §五(一)),
terminations, cancelled and locked codes, multi-site practice, an institution suspended by
its agency and one terminated, and a department whose settlement is stopped. Dates are
relative to ``today`` so the demo stays meaningful whenever it is generated.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loader import columns as col

DIVISIONS = {"330902": "定海区", "330903": "普陀区", "330921": "岱山县", "330922": "嵊泗县"}
HOSPITAL_KINDS = ("人民医院", "中医院", "第二人民医院", "妇幼保健院", "社区卫生服务中心", "中西医结合医院")
DEPARTMENTS = ("A01", "A02", "A03", "A04", "A05", "A07", "A10", "A12")  # 国家科室代码样式
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红鹏辉建林波宁斌浩宇晨欣怡佳琪雪梅海燕志刚文俊"
CATEGORY_BY_PREFIX = {"D": "医师", "N": "护士", "HY": "药师", "HJ": "技师"}

STAFF_HEADERS = [col.CODE, col.NAME, col.CATEGORY, col.INSTITUTION, col.DEPARTMENT, col.STATUS,
                 col.START, col.END, col.ID_NUMBER, col.UPDATED]  # fmt: skip
INSTITUTION_HEADERS = [col.INSTITUTION, col.INSTITUTION_NAME, col.REGION, col.STATUS, col.START,
                       col.END, col.UPDATED]  # fmt: skip
DEPARTMENT_HEADERS = [col.INSTITUTION, col.DEPARTMENT, col.STATUS, col.START, col.END]

# Fixed institutions of the scenarios.
HOSPITAL = "H33090200001"  # 正常
SUSPENDED_HOSPITAL = "H33090300002"  # 中止 around today
TERMINATED_HOSPITAL = "H33092100003"  # 解除 since 60 days ago
STOPPED_DEPARTMENT = "A05"  # at HOSPITAL, settlement stopped around today


@dataclass(frozen=True)
class Scenario:
    code: str
    what: str


SCENARIOS = (
    Scenario("D330902000001", f"医师，{HOSPITAL} 正常"),
    Scenario("D330902000002", f"医师，{HOSPITAL} 中止 3 个月（今天前 30 天起）"),
    Scenario("D330902000003", f"医师，{HOSPITAL} 解除（今天前 60 天起）"),
    Scenario("D330902000004", f"医师，{HOSPITAL} 注销（今天前 90 天起）"),
    Scenario("D330902000005", f"医师，{HOSPITAL} 封锁（今天前 10 天起，已离职）"),
    Scenario("D330902000006", f"医师，多点执业：{HOSPITAL} 与 {SUSPENDED_HOSPITAL} 均正常"),
    Scenario("D330903000007", f"医师，仅在 {SUSPENDED_HOSPITAL} 正常"),
    Scenario("N330902000008", f"护士，{HOSPITAL} 正常"),
)


def _fmt(day: dt.date | None) -> str:
    return day.isoformat() if day else ""


def _id_number(rng: random.Random, division: str) -> str:
    """A synthetic 18-digit ID with a valid GB 11643 check digit (never a real person)."""
    birth = dt.date(1960, 1, 1) + dt.timedelta(days=rng.randrange(0, 14000))
    body = f"{division}{birth:%Y%m%d}{rng.randrange(0, 999):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    return body + check


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


@dataclass
class DemoSet:
    today: dt.date
    staff: int
    seed: int = 20261124
    # Exactly this many staff rows (more people are invented as needed); None: ``staff`` people.
    rows: int | None = None
    # This share of staff rows is spoiled, one of ``BAD_ROWS`` each, for tests and benchmarks.
    bad_share: float = 0.0

    def _days(self, offset: int) -> dt.date:
        return self.today + dt.timedelta(days=offset)

    def institutions(self) -> list[list[str]]:
        rows = [
            [HOSPITAL, "舟山市定海区人民医院", "330902", "正常", "2020-01-01", "", "2025-12-30 09:00:00"],
            [SUSPENDED_HOSPITAL, "舟山市普陀区中医院", "330903", "正常", "2020-01-01", "", "2025-12-30 09:00:00"],
            [SUSPENDED_HOSPITAL, "舟山市普陀区中医院", "330903", "中止", _fmt(self._days(-20)),
             _fmt(self._days(70)), f"{self._days(-21)} 16:00:00"],
            [TERMINATED_HOSPITAL, "岱山县第二人民医院", "330921", "正常", "2020-01-01", "", "2025-12-30 09:00:00"],
            [TERMINATED_HOSPITAL, "岱山县第二人民医院", "330921", "解除", _fmt(self._days(-60)), "",
             f"{self._days(-61)} 10:00:00"],
        ]  # fmt: skip
        for seq, code, name, division in self._random_institutions():
            rows.append([code, name, division, "正常", f"{2019 + seq % 5}-01-01", "", "2025-12-30 09:00:00"])
        return rows

    def _random_institutions(self) -> Iterator[tuple[int, str, str, str]]:
        hospitals = max(6, self.staff // 60)
        pharmacies = max(2, self.staff // 250)
        divisions = list(DIVISIONS)
        for seq in range(4, 4 + hospitals):
            division = divisions[seq % len(divisions)]
            kind = HOSPITAL_KINDS[seq % len(HOSPITAL_KINDS)]
            yield seq, f"H{division}{seq:05d}", f"舟山市{DIVISIONS[division]}{kind}（{seq}）", division
        for seq in range(1, 1 + pharmacies):
            division = divisions[seq % len(divisions)]
            yield seq, f"P{division}{seq:05d}", f"{DIVISIONS[division]}康宁大药房第{seq}分店", division

    def departments(self) -> list[list[str]]:
        return [[HOSPITAL, STOPPED_DEPARTMENT, "中止", _fmt(self._days(-15)), _fmt(self._days(45))]]

    def _scenario_rows(self, rng: random.Random) -> list[list[str]]:
        base = "2024-01-01"

        def row(code: str, inst: str, status: str, start: str, end: str = "", dept: str = "A03") -> list[str]:
            prefix = "N" if code.startswith("N") else "D"
            return [code, _name(rng), CATEGORY_BY_PREFIX[prefix], inst, dept, status, start, end,
                    _id_number(rng, code[1:7]), f"{self._days(-1)} 08:00:00"]  # fmt: skip

        d = self._days
        return [
            row("D330902000001", HOSPITAL, "正常", base),
            row("D330902000002", HOSPITAL, "正常", base),
            row("D330902000002", HOSPITAL, "中止", _fmt(d(-30)), _fmt(d(-30) + dt.timedelta(days=91))),
            row("D330902000003", HOSPITAL, "正常", base, _fmt(d(-61))),
            row("D330902000003", HOSPITAL, "解除", _fmt(d(-60))),
            row("D330902000004", HOSPITAL, "注销", _fmt(d(-90))),
            row("D330902000005", HOSPITAL, "正常", base, _fmt(d(-11))),
            row("D330902000005", HOSPITAL, "封锁", _fmt(d(-10))),
            row("D330902000006", HOSPITAL, "正常", base),
            row("D330902000006", SUSPENDED_HOSPITAL, "正常", base),
            row("D330903000007", SUSPENDED_HOSPITAL, "正常", base),
            row("N330902000008", HOSPITAL, "正常", base),
        ]

    def staff_rows(self) -> Iterator[list[str]]:
        """The staff export's rows: the scenarios, the population, the requested bad rows."""
        spoil_rng = random.Random(self.seed + 1)
        rows = self._population_rows()
        if self.rows is not None:
            rows = itertools.islice(rows, self.rows)
        for number, row in enumerate(rows):
            if number >= len(SCENARIOS) * 2 and self.bad_share and spoil_rng.random() < self.bad_share:
                spoil = BAD_ROWS[spoil_rng.randrange(len(BAD_ROWS))]
                row = spoil(list(row))
            yield row

    def _population_rows(self) -> Iterator[list[str]]:
        rng = random.Random(self.seed)
        yield from self._scenario_rows(rng)
        institutions = [code for _, code, _, _ in self._random_institutions()]
        hospitals = [c for c in institutions if c.startswith("H")] + [HOSPITAL, SUSPENDED_HOSPITAL]
        pharmacies = [c for c in institutions if c.startswith("P")]
        prefixes = ("D",) * 12 + ("N",) * 6 + ("HY", "HJ")
        divisions = list(DIVISIONS)
        people: Iterable[int] = (
            itertools.count(100)
            if self.rows is not None
            else range(100, 100 + max(0, self.staff - len(SCENARIOS)))
        )
        for seq in people:
            prefix = rng.choice(prefixes)
            division = divisions[seq % len(divisions)]
            # 6-digit sequence per division: four divisions give four million distinct codes.
            code = f"{prefix}{division}{seq // len(divisions):06d}"
            category = CATEGORY_BY_PREFIX[prefix]
            sites = [rng.choice(pharmacies if prefix == "HY" and rng.random() < 0.5 else hospitals)]
            if rng.random() < 0.08:  # 多点执业
                second = rng.choice(hospitals)
                if second != sites[0]:
                    sites.append(second)
            name, id_number = _name(rng), _id_number(rng, division)
            updated = (
                f"{self._days(-rng.randrange(1, 400))} {rng.randrange(8, 18):02d}:{rng.randrange(60):02d}:00"
            )
            person = [code, name, category]
            for site in sites:
                yield from self._periods(rng, person, site, id_number, updated)

    def _periods(
        self, rng: random.Random, person: list[str], site: str, id_number: str, updated: str
    ) -> Iterator[list[str]]:
        """One person's periods at one site, with the status mix real exports carry."""
        dept = rng.choice(DEPARTMENTS)
        start = dt.date(2022, 1, 1) + dt.timedelta(days=rng.randrange(0, 1000))

        def emit(status: str, begin: dt.date, end: dt.date | None) -> list[str]:
            return [*person, site, dept, status, _fmt(begin), _fmt(end), id_number, updated]

        roll = rng.random()
        if roll < 0.04:  # 中止 3 or 6 months, over a 正常 agreement
            yield emit("正常", start, None)
            begin = self._days(rng.randrange(-200, 60))
            yield emit("中止", begin, begin + dt.timedelta(days=rng.choice((91, 183)) - 1))
        elif roll < 0.05:  # 解除
            cut = self._days(rng.randrange(-300, -1))
            yield emit("正常", start, cut - dt.timedelta(days=1))
            yield emit("解除", cut, None)
        elif roll < 0.055:  # 注销
            yield emit("注销", self._days(rng.randrange(-500, -1)), None)
        elif roll < 0.065:  # 封锁: left this hospital
            cut = self._days(rng.randrange(-300, -1))
            yield emit("正常", start, cut - dt.timedelta(days=1))
            yield emit("封锁", cut, None)
        else:
            yield emit("正常", start, None)

    def write(self, out_dir: Path, fmt: str = "csv") -> dict[str, Path]:
        """Write the staff, institution and department exports in ``fmt`` (``FORMATS``);
        return their paths by kind."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown demo format {fmt!r}: one of {', '.join(FORMATS)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".xlsx" if fmt == "xlsx" else ".csv"
        files = {
            "institution": (out_dir / f"institutions{suffix}", INSTITUTION_HEADERS, self.institutions()),
            "department": (out_dir / f"departments{suffix}", DEPARTMENT_HEADERS, self.departments()),
            "staff": (out_dir / f"staff{suffix}", STAFF_HEADERS, self.staff_rows()),
        }
        for path, headers, rows in files.values():
            if fmt == "xlsx":
                _write_xlsx(path, headers, rows)
            else:
                with path.open("w", encoding=FORMATS[fmt], newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(headers)
                    writer.writerows(rows)
        return {kind: path for kind, (path, _, _) in files.items()}


def _with(column: str, value: str | Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    at = STAFF_HEADERS.index(column)

    def spoil(row: list[str]) -> list[str]:
        row[at] = value(row[at]) if callable(value) else value
        return row

    return spoil


def _end_before_start(row: list[str]) -> list[str]:
    start = dt.date.fromisoformat(row[STAFF_HEADERS.index(col.START)])
    row[STAFF_HEADERS.index(col.END)] = (start - dt.timedelta(days=1)).isoformat()
    return row


# Every kind of bad row an export carries, each as the loader must reject it.
BAD_ROWS: tuple[Callable[[list[str]], list[str]], ...] = (
    _with(col.CODE, lambda code: code[:-1]),  # 11 digits: 不符合国家编码规则
    _with(col.CODE, ""),
    _with(col.INSTITUTION, lambda code: "X" + code[1:]),
    _with(col.INSTITUTION, ""),
    _with(col.STATUS, "停诊"),
    _with(col.STATUS, ""),
    _with(col.START, "2026-02-30"),
    _with(col.START, ""),
    _with(col.END, "下月底"),
    _end_before_start,
    _with(col.CATEGORY, "主任"),
)

# Demo formats and their text encodings (XLSX has its own).
FORMATS = {"csv": "utf-8-sig", "gb18030": "gb18030", "xlsx": ""}
_DATE_COLUMNS = frozenset({col.START, col.END})


def _write_xlsx(path: Path, headers: list[str], rows: Iterable[list[str]]) -> None:
    """One sheet, dates as real Excel date cells (as the platform's XLSX exports have them),
    streamed row by row so a million rows take constant memory."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = book.add_worksheet("导出数据")
    date_format = book.add_format({"num_format": "yyyy-mm-dd"})
    date_at = [i for i, h in enumerate(headers) if h in _DATE_COLUMNS]
    sheet.write_row(0, 0, headers)
    for r, row in enumerate(rows, start=1):
        sheet.write_row(r, 0, row)
        for c in date_at:
            try:
                day = dt.date.fromisoformat(row[c])
            except ValueError:
                continue  # empty (open-ended) or a deliberately bad date: stays text
            sheet.write_datetime(r, c, dt.datetime(day.year, day.month, day.day), date_format)
    book.close()


def load_order(paths: dict[str, Path]) -> list[tuple[str, Path]]:
    """Institutions first, then departments, then staff: the order an operator loads them."""
    return [(kind, paths[kind]) for kind in ("institution", "department", "staff") if kind in paths]
