# Issue 22: Tables I and II of the quick profile with the new training recipe (poly lr, augmentation),
# the default columns only (vanilla, trm), seeds 0, 1, 2 -- compared with the issue-14 figures.
from dataclasses import replace
from trmcore.study import reproduce
from trmcore.study.profiles import get_profile

q = get_profile("quick")
p = replace(q, name="quick-recipe", methods=("vanilla", "trm"), sampling_variants=(), normalize_variants=())
if __name__ == "__main__":
    reproduce("/work/st/q22", p, seeds=[0, 1, 2], tables=["I", "II", "III", "seq", "fig2"], seeded_tables=["I"], workers=2)
