// before/after: the range input moves the edge of the "before" image (no framework)
document.querySelectorAll(".item").forEach(function (item) {
  var slider = item.querySelector("input.slider");
  var compare = item.querySelector(".compare");
  if (!slider || !compare) { return; }
  var show = function () { compare.style.setProperty("--pos", slider.value + "%"); };
  slider.addEventListener("input", show);
  show();
});
