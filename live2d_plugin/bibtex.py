# Scipion renders a reference as "<first author> et al., <journal>, <year>" and shows
# "Error with citation" when year is missing: journal names the repository for that line.
"""
@misc{Barad_Live2D,
  title = {Live2D: live 2D classification of cryo-EM particles from Warp with cisTEM},
  author = {Barad, Benjamin A.},
  journal = {GitHub repository},
  year = {2020},
  howpublished = {https://github.com/bbarad/Live2D},
  url = {https://github.com/bbarad/Live2D}
}

@article{Grant2018,
  title = {cisTEM, user-friendly software for single-particle image processing},
  author = {Grant, Timothy and Rohou, Alexis and Grigorieff, Nikolaus},
  journal = {eLife},
  volume = {7},
  pages = {e35383},
  year = {2018},
  doi = {http://doi.org/10.7554/eLife.35383}
}

@article{Tegunov2019,
  title = {Real-time cryo-electron microscopy data preprocessing with Warp},
  author = {Tegunov, Dimitry and Cramer, Patrick},
  journal = {Nature Methods},
  volume = {16},
  pages = {1146--1152},
  year = {2019},
  doi = {http://doi.org/10.1038/s41592-019-0580-y}
}
"""
