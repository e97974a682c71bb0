"""Learned masks, trained with `spacy train`: DiffMask (De Cao et al. 2020), a probe trained on the frozen
model that says which inputs can be replaced by a learned placeholder (`diffmask`), and variational word
masks (VMASK, Chen & Ji 2020), a mask layer trained with the classifier itself (`vmask`)."""
