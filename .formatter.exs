# Used by "mix format"
[
  inputs: ["{mix,.formatter}.exs", "{bench,config,lib,mix,standin,test}/**/*.{ex,exs}"]
]
