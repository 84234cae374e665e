"""GUIDE: project a trained teacher into a smaller student in parameter space."""

from guide_jax.guide.projection import (GuideError, check_compatible, guided_layers,
                                        head_dim_selection, head_selection, pca_basis, project,
                                        uniform_selection)
from guide_jax.guide.student_init import (INIT_MODES, apply, match_loss, projected_teacher,
                                          selected)
