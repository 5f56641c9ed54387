# Used by "mix format"
[
  inputs: ["{mix,.formatter}.exs", "{config,lib,mix,standin,test}/**/*.{ex,exs}"]
]
