"""Label the bibliography by author and year, exactly as the text cites.

pybtex's default ``alpha`` labels ("HJA20", "KynkaanniemiKL+19") match nothing
the reader sees in the text, which cites by author and year ("Ho et al.,
2020"). This extension registers two styles under the name
``author_year_labels``:

* a bibliography (formatting) style: pybtex's ``alpha`` style, same entries in
  the same order, whose labels are the inner text of a parenthetical citation,
  built from sphinxcontrib-bibtex's own author-year templates;
* a referencing style: sphinxcontrib-bibtex's ``author_year``, except that the
  year it prints carries the letter that tells apart two works with the same
  authors and year ("Song et al., 2021a" and "2021b"), taken from the label.

So an in-text citation and the label of the entry it links to read the same.
"""

from collections import Counter
from dataclasses import dataclass

import pybtex.plugin
import sphinxcontrib.bibtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.alpha import Style as AlphaStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import node
from sphinx.application import Sphinx
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
    BasicAuthorYearParentheticalReferenceStyle,
    BasicAuthorYearTextualReferenceStyle,
)
from sphinxcontrib.bibtex.style.template import join, join2, post_text, pre_text, reference, year

STYLE_NAME = "author_year_labels"
SUFFIXES = "abcdefghijklmnopqrstuvwxyz"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels such as "Ho et al., 2020", with "a", "b", ... appended where two entries would share one."""

    def __init__(self):
        self.reference_style = AuthorYearReferenceStyle()
        self.template = join(sep=self.reference_style.author_year_sep)[
            self.reference_style.person.author_or_editor_or_title(full=False), year
        ]

    def plain_label(self, entry) -> str:
        """The label without a suffix: what a parenthetical citation of ``entry`` says inside its brackets."""
        return self.template.format_data({"entry": entry, "style": self.reference_style}).render_as("text")

    def format_labels(self, sorted_entries):
        labels = [self.plain_label(entry) for entry in sorted_entries]
        counts = Counter(labels)
        seen = Counter()
        for label in labels:
            if counts[label] == 1:
                yield label
            else:
                yield label + SUFFIXES[seen[label]]
                seen[label] += 1


class AuthorYearLabelsStyle(AlphaStyle):
    """pybtex's alpha style with author-year labels."""

    default_label_style = AuthorYearLabelStyle


_LABELS = AuthorYearLabelStyle()


@node
def labelled_year(children, data):
    """The year of the cited entry, with the suffix letter its bibliography label carries (if any)."""
    assert not children
    printed = year.format_data(data)
    label = data["formatted_entry"].label
    plain = _LABELS.plain_label(data["entry"])
    suffix = label[len(plain) :] if label.startswith(plain) else ""
    return Text(printed, suffix) if suffix else printed


@dataclass
class ParentheticalStyle(BasicAuthorYearParentheticalReferenceStyle):
    def inner(self, role_name: str):
        return join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
            pre_text,
            reference[
                join(sep=self.author_year_sep)[
                    self.person.author_or_editor_or_title(full="s" in role_name),
                    labelled_year,
                ]
            ],
            post_text,
        ]


@dataclass
class TextualStyle(BasicAuthorYearTextualReferenceStyle):
    def inner(self, role_name: str):
        return join(sep=self.text_reference_sep)[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[
                self.bracket.left,
                join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[pre_text, reference[labelled_year], post_text],
                self.bracket.right,
            ],
        ]


@dataclass
class AuthorYearLabelsReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's author_year referencing, printing years as the bibliography labels do."""

    def __post_init__(self):
        super().__post_init__()
        replacements = [
            ParentheticalStyle(
                bracket=self.bracket_parenthetical,
                person=self.person,
                author_year_sep=self.author_year_sep,
                pre_text_sep=self.pre_text_sep,
                post_text_sep=self.post_text_sep,
            ),
            TextualStyle(
                bracket=self.bracket_textual,
                person=self.person,
                text_reference_sep=self.text_reference_sep,
                pre_text_sep=self.pre_text_sep,
                post_text_sep=self.post_text_sep,
            ),
        ]
        for style in replacements:
            self.role_style.update((role_name, style) for role_name in style.role_names())


def setup(app: Sphinx) -> dict:
    pybtex.plugin.register_plugin("pybtex.style.formatting", STYLE_NAME, AuthorYearLabelsStyle)
    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", STYLE_NAME, AuthorYearLabelsReferenceStyle
    )
    return {"parallel_read_safe": True, "parallel_write_safe": True}
