"""The rule table: for every ``Reason``, the policy article behind it, the sentence the
cashier reads, and whether the emergency exemption can override it.

This is data. The decision engine (``rules.py``) only finds which reason applies; everything
a hospital or the agency reads in a verdict comes from here, so a changed article or wording
is a one-line edit reviewed next to its source. Articles cite the documents in the policy
seed set by their issuing number.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Verdict(enum.IntEnum):
    """Mirrors ``settlement.v1.Verdict`` (same names and numbers; a test checks it)."""

    VERDICT_UNSPECIFIED = 0
    ACCEPT = 1
    REJECT = 2
    ACCEPT_EMERGENCY = 3


class Reason(enum.IntEnum):
    """Mirrors ``settlement.v1.Reason`` (same names and numbers; a test checks it)."""

    REASON_UNSPECIFIED = 0
    OK = 1
    STAFF_CODE_MISSING = 2
    STAFF_CODE_MALFORMED = 3
    STAFF_UNREGISTERED = 4
    STAFF_NOT_AT_INSTITUTION = 5
    STAFF_SUSPENDED = 6
    STAFF_TERMINATED = 7
    STAFF_CODE_CANCELLED = 8
    STAFF_LOCKED = 9
    INSTITUTION_UNREGISTERED = 10
    INSTITUTION_SUSPENDED = 11
    INSTITUTION_TERMINATED = 12
    DEPARTMENT_SUSPENDED = 13
    ITEM_CODE_MISSING = 14
    DEPARTMENT_CODE_MISSING = 15


# The five policy documents, by issuing number.
ZHOUSHAN = "舟医保发〔2022〕16号"  # 舟山市医疗保障协议医师管理暂行办法
JINING = "济宁市医疗保障局医保支付资格相关人员管理通知（2024）"
FOSHAN = "佛医保〔2021〕93号"  # 佛山市医疗机构医疗保障定点管理实施办法
NANTONG = "南通市基本医疗保险定点医疗机构服务协议"

EMERGENCY_STAFF_ARTICLE = f"{ZHOUSHAN} 第十五条（急救除外）"
EMERGENCY_INSTITUTION_ARTICLE = f"{FOSHAN} 第三十八条（急诊和抢救除外）"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """What a verdict says for one reason.

    ``detail`` is a ``str.format`` template; the engine supplies ``code`` (staff code),
    ``institution``, ``department``, ``date`` (service day), ``start`` and ``end`` (the
    period that applied; ``长期`` when open-ended).
    """

    reason: Reason
    article: str
    detail: str
    # The article that lets an emergency line through despite this reason; None: never.
    emergency_article: str | None


RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        Reason.ITEM_CODE_MISSING,
        f"{NANTONG} 第六十条",
        "该费用明细未传医保目录编码，无项目代码的项目费用医保基金不予支付。",
        None,
    ),
    RuleSpec(
        Reason.STAFF_CODE_MISSING,
        f"{ZHOUSHAN} 第十一条",
        "该费用明细未传开单人员医保国家编码，不得纳入医保结算，请在 HIS 中补传医保医师代码。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_CODE_MALFORMED,
        f"{ZHOUSHAN} 第十一条",
        "开单人员编码“{code}”不符合医保国家编码规则，请核对 HIS 中的医保医师代码对照。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.INSTITUTION_UNREGISTERED,
        f"{FOSHAN} 第三十八条",
        "机构“{institution}”在服务日期 {date} 无有效医保定点协议，"
        "在非定点医疗机构发生的费用医保基金不予支付。",
        EMERGENCY_INSTITUTION_ARTICLE,
    ),
    RuleSpec(
        Reason.INSTITUTION_TERMINATED,
        f"{FOSHAN} 第十八条",
        "机构“{institution}”的医保协议自 {start} 起解除，协议解除后产生的费用医保基金不再结算。",
        EMERGENCY_INSTITUTION_ARTICLE,
    ),
    RuleSpec(
        Reason.INSTITUTION_SUSPENDED,
        f"{FOSHAN} 第十七条",
        "机构“{institution}”的医保协议中止（{start} 至 {end}），中止期间发生的医保费用不予结算。",
        EMERGENCY_INSTITUTION_ARTICLE,
    ),
    RuleSpec(
        Reason.DEPARTMENT_CODE_MISSING,
        f"{FOSHAN} 第二十条",
        "该费用明细未传科室编码，本机构（{institution}）有科室被中止医保结算（{start} 至 {end}），"
        "须传开单科室编码方可结算，请在 HIS 中补传科室编码。",
        EMERGENCY_INSTITUTION_ARTICLE,
    ),
    RuleSpec(
        Reason.DEPARTMENT_SUSPENDED,
        f"{FOSHAN} 第二十条",
        "科室“{department}”被中止医保结算（{start} 至 {end}），该期间发生的费用不予结算。",
        EMERGENCY_INSTITUTION_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_UNREGISTERED,
        f"{ZHOUSHAN} 第十五条",
        "人员编码“{code}”未登记为医保支付资格人员，非医保医师提供服务发生的费用医保基金不予支付。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_NOT_AT_INSTITUTION,
        f"{ZHOUSHAN} 第十一条",
        "人员“{code}”在服务日期 {date} 未与本机构（{institution}）签订有效医保服务协议，"
        "其处方或医嘱不得纳入医保结算。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_CODE_CANCELLED,
        f"{ZHOUSHAN} 第十四条",
        "人员“{code}”的医保医师国家编码自 {start} 起注销，费用医保基金不予支付。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_TERMINATED,
        f"{JINING} 五（二）",
        "人员“{code}”的医保服务协议自 {start} 起解除，其提供医药服务发生的费用医保基金不予支付。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_LOCKED,
        f"{ZHOUSHAN} 第八条",
        "人员“{code}”的医保医师国家编码自 {start} 起已被封锁（解除聘用），费用不予医保结算。",
        EMERGENCY_STAFF_ARTICLE,
    ),
    RuleSpec(
        Reason.STAFF_SUSPENDED,
        f"{JINING} 五（二）",
        "人员“{code}”的医保服务协议中止（{start} 至 {end}），其提供医药服务发生的费用医保基金不予支付。",
        EMERGENCY_STAFF_ARTICLE,
    ),
)

RULE_BY_REASON: Mapping[Reason, RuleSpec] = {spec.reason: spec for spec in RULES}

# Prefix of an exempted line's detail: it was paid, and the agency will audit it.
EMERGENCY_DETAIL_PREFIX = "急诊、抢救费用按规定予以支付并纳入稽核（本应："
EMERGENCY_DETAIL_SUFFIX = "）"

# When the data store is down and the outage policy is ``accept-flagged``, lines the gateway
# has no data for are paid under the emergency plan for system failures (004 §58) and audited.
OUTAGE_ARTICLE = f"{NANTONG} 第五十八条（应急预案）"
OUTAGE_DETAIL = "医保结算数据暂不可用，按信息系统故障应急预案先行支付，事后纳入稽核。"
