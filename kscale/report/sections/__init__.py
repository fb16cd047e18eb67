"""The report's sections, one module each, in the order they appear in ``summary.md``.

A section is a function ``(FamilyContext) -> SectionOutput``: it reads the family's rows and the
shared fits from the context and returns its markdown, figures, problems, answer sentence and
table. A new section is one module plus one line in :data:`SECTION_ORDER`.
"""
from __future__ import annotations

from collections.abc import Callable

from kscale.registry import Registry
from kscale.report.context import FamilyContext, SectionOutput
from kscale.report.sections.crossovers import crossover_section
from kscale.report.sections.decision import decision_section
from kscale.report.sections.formats import formats_section
from kscale.report.sections.frontier import frontier_section
from kscale.report.sections.law import law_section
from kscale.report.sections.measured import measured_section
from kscale.report.sections.paired import paired_section
from kscale.report.sections.precision import precision_section
from kscale.report.sections.tokens import tokens_section

Section = Callable[[FamilyContext], SectionOutput]
SECTIONS: Registry[Section] = Registry("report section")
SECTIONS.register("measured", measured_section)
SECTIONS.register("frontier", frontier_section)
SECTIONS.register("crossovers", crossover_section)
SECTIONS.register("law", law_section)
SECTIONS.register("decision", decision_section)
SECTIONS.register("tokens", tokens_section)
SECTIONS.register("paired", paired_section)
SECTIONS.register("formats", formats_section)
SECTIONS.register("precision", precision_section)
#: Order in the summary (the registry itself is unordered).
SECTION_ORDER = ("measured", "frontier", "crossovers", "law", "decision", "tokens", "paired", "formats", "precision")
