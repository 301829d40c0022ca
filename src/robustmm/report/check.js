// Writes into the page whether every figure decoded and was drawn to its last row (the figures are opaque,
// so a transparent last row is a truncated image), for a reader and for the headless-browser check.
function drawn(img) {
  if (!img.complete || img.naturalWidth === 0) return false;
  var canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  var context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  var bottom = context.getImageData(0, img.naturalHeight - 1, img.naturalWidth, 1).data;
  for (var i = 3; i < bottom.length; i += 4) if (bottom[i] === 0) return false;
  return true;
}
window.addEventListener("load", function () {
  var figures = Array.prototype.slice.call(document.images);
  var broken = figures.filter(function (img) { return !drawn(img); }).map(function (img) { return img.alt; });
  document.getElementById("render-status").textContent = broken.length
    ? "broken figures: " + broken.join(", ") : "all " + figures.length + " figures drawn";
});
